"""`samdata embed`: image shards -> SAM-family image embeddings as Parquet (Ray Data)."""

from __future__ import annotations

from operators.embed import Embedder

from .config import EmbedConfig
from .runner import RunSummary, Stage, run_sharded


def run_embed(cfg: EmbedConfig) -> RunSummary:
    """Read shards -> embed on the actor pool -> write Parquet per shard; return the summary."""
    stage = Stage(
        job="embed",
        actor=Embedder,
        actor_kwargs=dict(
            model_name=cfg.model.name, checkpoint=cfg.model.checkpoint, sha256=cfg.model.sha256,
            seed=cfg.model.seed, precision=cfg.model.precision,
            model_batch_size=cfg.model.batch_size, out_dtype=cfg.output.dtype,
            compile_encoder=cfg.model.compile, channels_last=cfg.model.channels_last,
            batch_limit=cfg.compute.ray_batch_size),
        read_mode="padded",
        table="embeddings",
    )
    return run_sharded(cfg, stage)
