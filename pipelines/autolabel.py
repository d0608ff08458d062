"""`samdata autolabel`: image shards -> everything-mode masks (SA-1B annotations) as Parquet."""

from __future__ import annotations

from operators.autolabel import AutoLabeler

from .config import AutolabelConfig
from .runner import RunSummary, Stage, run_sharded


def run_autolabel(cfg: AutolabelConfig) -> RunSummary:
    """Read shards (original images) -> generate masks on the actor pool -> write Parquet."""
    stage = Stage(
        job="autolabel",
        actor=AutoLabeler,
        actor_kwargs=dict(
            model_name=cfg.model.name, settings=cfg.generator.settings(),
            checkpoint=cfg.model.checkpoint, sha256=cfg.model.sha256, seed=cfg.model.seed,
            precision=cfg.model.precision, encoder_batch_size=cfg.model.batch_size,
            decoder_batch_size=cfg.generator.decoder_batch_size,
            upscale_batch_size=cfg.generator.upscale_batch_size,
            compile_encoder=cfg.model.compile, channels_last=cfg.model.channels_last),
        read_mode="original",
        table="masks",
    )
    return run_sharded(cfg, stage)
