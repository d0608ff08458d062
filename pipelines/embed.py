"""`samdata embed`: image shards -> SAM-family image embeddings as Parquet (Ray Data)."""

from __future__ import annotations

from operators.embed.embedder import Embedder

from .config import EmbedConfig
from .runner import Job, RunSummary, run_sharded


def run_embed(cfg: EmbedConfig, overwrite: bool = False) -> RunSummary:
    """Read shards -> embed on the actor pool -> write Parquet per shard; return the summary."""
    job = Job(
        name="embed",
        actor=Embedder,
        actor_kwargs=dict(model=cfg.model, output=cfg.output),
        read_mode="padded",  # the encoder's resized, padded input, made on CPU workers
        table="embeddings",
        include_image=cfg.output.include_image,
        decodes_on_device=True,  # input.decode device: the Embedder decodes JPEGs on its GPU
        # high_res only when on: outputs written before the field keep their identity
        settings={"output": {"dtype": cfg.output.dtype,
                             "include_image": cfg.output.include_image,
                             **({"high_res": True} if cfg.output.high_res else {})}},
    )
    return run_sharded(cfg, job, overwrite)
