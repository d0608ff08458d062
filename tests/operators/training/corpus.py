"""Building small training corpora without Ray: SA-1B sample shards and their teacher embeddings
written by the embed job's own operators (read_and_prepare -> Embedder -> write_batch ->
commit_shard), so the files are exactly what `samdata embed` writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

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


def stage1_config(embeddings: str, out, student_name: str, steps: int, images: int, name: str,
                  **sections) -> dict:
    """A tiny stage-1 distill config (a dict for parse_config): `student_name` learns the corpus at
    `embeddings` for `steps` steps of 4, validated at the end on `images` held-out images;
    `sections` override or add sections (dicts are merged into the defaults)."""
    data = {
        "stage": 1,
        "data": {"embeddings": embeddings, "val_shards": 1, "rows_per_pass": 64},
        "student": {"name": student_name},
        "stage1": {"batch_size": 4, "steps": steps, "lr": 3e-3, "warmup_epochs": 0.5},
        "validation": {"every": steps, "images": images},
        "compute": {"log_every": 20, "cpus_per_worker": 1.0},
        "output": {"path": str(out), "name": name, "checkpoint_every": steps},
        "ray": {"num_cpus": 2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


def train_losses(step: Callable, batch: Mapping, optimizer: torch.optim.Optimizer, steps: int,
                 scheduler=None) -> list[float]:
    """`steps` optimizer steps of `step` (a training step: batch -> (loss, parts)) on one batch;
    the loss of each, before its update."""
    losses = []
    for _ in range(steps):
        loss, _ = step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses
