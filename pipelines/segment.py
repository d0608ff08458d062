"""`samdata segment`: image shards + prompts -> one mask per prompt as Parquet (Ray Data)."""

from __future__ import annotations

from models import OnePassModel, model_kind
from operators.prompted.segmenter import Segmenter

from .config import SegmentConfig
from .runner import Job, RunSummary, run_sharded


def run_segment(cfg: SegmentConfig, overwrite: bool = False) -> RunSummary:
    """Read shards (original images, with their json's annotations when the prompts come from
    it) -> one mask per prompt on the actor pool -> write Parquet per shard."""
    job = Job(
        name="segment",
        actor=Segmenter,
        actor_kwargs=dict(model=cfg.model, prompts=cfg.prompts, generator=cfg.generator),
        read_mode="original",  # masks at the original size
        table="segments",
        include_annotations=cfg.prompts.source == "sa1b",  # the prompts are in the json
        settings={"prompts": cfg.prompts.model_dump(
            exclude={"decoder_batch_size", "upscale_batch_size"}),
            # FastSAM selects among its everything-mode detections: their settings count
            "generator": cfg.generator.settings(True)
            if model_kind(cfg.model.name) is OnePassModel else {}},
    )
    return run_sharded(cfg, job, overwrite)
