"""`samdata autolabel`: image shards -> everything-mode masks (SA-1B annotations) as Parquet."""

from __future__ import annotations

from models import OnePassModel, model_kind
from operators.everything.labeler import AutoLabeler

from .config import AutolabelConfig
from .runner import Job, RunSummary, run_sharded


def run_autolabel(cfg: AutolabelConfig, overwrite: bool = False) -> RunSummary:
    """Read shards (original images) -> generate masks on the actor pool -> write Parquet."""
    job = Job(
        name="autolabel",
        actor=AutoLabeler,
        actor_kwargs=dict(model=cfg.model, generator=cfg.generator),
        read_mode="original",  # everything mode crops the decoded original
        table="masks",
        settings={"generator": cfg.generator.settings(
            model_kind(cfg.model.name) is OnePassModel)},
    )
    return run_sharded(cfg, job, overwrite)
