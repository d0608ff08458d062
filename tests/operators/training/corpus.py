"""Building small training corpora without Ray: SA-1B sample shards and their teacher embeddings
written by the embed job's own operators (read_and_prepare -> Embedder -> write_batch ->
commit_shard), so the files are exactly what `samdata embed` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from operators.config import EmbedOutputConfig, InputConfig, ModelConfig
from operators.embed.embedder import Embedder
from operators.shards.listing import list_shards
from operators.shards.prepare import read_and_prepare
from operators.shards.sample import write_sample_corpus
from operators.shards.write import commit_shard, existing_parts, write_batch
from tests.support import as_batch


def make_corpus(root: Path, shards: int = 3, per_shard: int = 6, seed: int = 0,
                include_image: bool = True, teacher: str = "sam_tiny",
                checkpoint: str | None = None, high_res: bool = False) -> tuple[str, str]:
    """SA-1B sample shards under root/corpus and their `teacher` embeddings (seed-0 random
    weights, or `checkpoint`) under root/emb, with a SAM 2 teacher's high-res maps when
    `high_res`; returns (corpus, embeddings) paths."""
    corpus, emb = str(root / "corpus"), str(root / "emb")
    write_sample_corpus(corpus, shards=shards, images_per_shard=per_shard, seed=seed)
    embedder = Embedder(ModelConfig(name=teacher, seed=0, checkpoint=checkpoint,
                                    precision="fp32"),
                        EmbedOutputConfig(path=emb, include_image=include_image,
                                          high_res=high_res))
    for shard in list_shards([corpus]):
        item = {"shard": shard.name, "url": shard.url, "container": shard.container}
        rows = list(read_and_prepare(item, teacher, InputConfig(urls=[corpus]),
                                     include_image=include_image))
        out = embedder(as_batch(rows))
        tallies = write_batch(out, emb, include_image=include_image)
        ok = int(np.sum(tallies["ok"]))
        commit_shard(emb, shard.name, {"shard": shard.name, "ok": ok, "images": ok,
                                       "parts": existing_parts(emb, shard.name).parts})
    return corpus, emb
