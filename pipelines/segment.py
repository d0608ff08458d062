"""`samdata segment`: image shards + prompts -> one mask per prompt as Parquet (Ray Data)."""

from __future__ import annotations

from operators.prompted.segmenter import Segmenter

from .config import SegmentConfig
from .runner import Job, RunSummary, run_sharded


def run_segment(cfg: SegmentConfig) -> RunSummary:
    """Read shards (original images, with their json's annotations when the prompts come from
    it) -> one mask per prompt on the actor pool -> write Parquet per shard."""
    job = Job(
        name="segment",
        actor=Segmenter,
        actor_kwargs=dict(model=cfg.model, prompts=cfg.prompts, generator=cfg.generator),
        read_mode="original",  # masks at the original size
        table="segments",
        include_annotations=cfg.prompts.source == "sa1b",  # the prompts are in the json
    )
    return run_sharded(cfg, job)
