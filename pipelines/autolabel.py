"""`samdata autolabel`: image shards -> masks (SA-1B annotations) as Parquet: everything mode
(class-agnostic), or with a concept model (SAM 3) every instance of each named concept."""

from __future__ import annotations

from models import ConceptModel, OnePassModel, model_kind
from operators.everything.labeler import AutoLabeler, concept_settings

from .config import AutolabelConfig
from .preflight import check_vocabulary, resolve_concepts
from .runner import Job, RunSummary, run_sharded


def run_autolabel(cfg: AutolabelConfig, overwrite: bool = False) -> RunSummary:
    """Read shards (original images) -> generate masks on the actor pool -> write Parquet."""
    if model_kind(cfg.model.name) is ConceptModel:
        # The concept list, read before Ray starts when it is a file; the output's identity
        # and every row's settings name it, and the identity the vocabulary's digest, so a
        # rerun with other concepts or another vocabulary is refused
        concepts = resolve_concepts(cfg.prompts.concepts, cfg.storage)
        vocabulary = check_vocabulary(cfg.model, cfg.storage)  # its sha256, for the identity
        job = Job(
            name="autolabel",
            actor=AutoLabeler,
            actor_kwargs=dict(model=cfg.model, generator=cfg.generator, prompts=cfg.prompts,
                              concepts=concepts),
            read_mode="original",  # labels at the original size, as everything mode
            table="concepts",
            settings={"prompts": concept_settings(cfg.prompts, concepts),
                      "vocabulary_sha256": vocabulary},
            categories=concepts,
        )
        return run_sharded(cfg, job, overwrite)
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
