"""`samdata autolabel`: image shards -> everything-mode masks (SA-1B annotations) as Parquet."""

from __future__ import annotations

from operators.everything.labeler import AutoLabeler

from .config import AutolabelConfig
from .runner import Job, RunSummary, run_sharded


def run_autolabel(cfg: AutolabelConfig) -> RunSummary:
    """Read shards (original images) -> generate masks on the actor pool -> write Parquet."""
    job = Job(
        name="autolabel",
        actor=AutoLabeler,
        actor_kwargs=dict(model=cfg.model, generator=cfg.generator),
        read_mode="original",  # everything mode crops the decoded original
        table="masks",
    )
    return run_sharded(cfg, job)
