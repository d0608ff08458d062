"""Job configs: pydantic models validated before any work starts, composed of the sections
that operators consume (operators/config.py), and their YAML loading.

A bad value is refused naming the field and what was expected, e.g.
`model.precision: expected one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp64'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator, model_validator

from models import ConceptModel, OnePassModel, PromptableModel, model_kind, models_of_kind
from models.registry import has_high_res, high_res_models
from operators.config import (
    ComputeConfig,
    ConceptPromptsConfig,
    EmbedOutputConfig,
    EvaluatedModel,
    EvaluationConfig,
    GeneratorConfig,
    GroundTruthConfig,
    InputConfig,
    MaskOutputConfig,
    ModelConfig,
    PromptsConfig,
    RayConfig,
    StorageConfig,
    Strict,
)
from operators.training.config import (
    DistillDataConfig,
    DistillOutputConfig,
    DistillSections,
    TrainComputeConfig,
)

__all__ = ["AutolabelConfig", "ComputeConfig", "ConfigError", "DistillConfig", "EmbedConfig",
           "EmbedOutputConfig", "EvaluateConfig", "GeneratorConfig", "InputConfig", "JobConfig",
           "MaskOutputConfig", "ModelConfig", "RayConfig", "SegmentConfig", "StorageConfig",
           "load_config", "parse_config"]


class ConfigError(ValueError):
    """A config that cannot run; the message names every bad field."""


class JobConfig(Strict):
    """What every sharded job has: where to read, which model, how to run."""

    input: InputConfig
    model: ModelConfig = ModelConfig()
    compute: ComputeConfig = ComputeConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()


def refuse_concept_model(model: ModelConfig, field: str, job: str) -> ModelConfig:
    """`model` unless it is a concept model (SAM 3), which takes text, not one box or point
    per mask: SAM 3's box and point prompts are `sam3_interactive` (the same sam3.pt)."""
    if model_kind(model.name) is ConceptModel:
        usable = [n for n in models_of_kind(PromptableModel) + models_of_kind(OnePassModel)]
        raise ValueError(
            f"{field}: expected a model that takes box or point prompts for {job} "
            f"({', '.join(usable[:6])}, ...), got '{model.name}', a concept model (use "
            f"`samdata autolabel` with prompts.concepts, or sam3_interactive for box and point "
            f"prompts: the same sam3.pt)")
    return model


def embedding_models() -> list[str]:
    """Registry models that have an image embedding (`models.image_embedding`): the promptable
    ones, and the concept models (SAM 3 and its students: the vision trunk's map)."""
    return models_of_kind(PromptableModel) + models_of_kind(ConceptModel)


class EmbedConfig(JobConfig):
    output: EmbedOutputConfig

    @field_validator("model")
    @classmethod
    def _has_embedding(cls, v: ModelConfig) -> ModelConfig:
        usable = embedding_models()
        if v.name not in usable:
            raise ValueError(
                f"name: expected a model with an image embedding ({', '.join(usable)}), got "
                f"'{v.name}', which segments in one pass (use it with `samdata autolabel`)"
            )
        return v

    @model_validator(mode="after")
    def _high_res_model(self) -> EmbedConfig:
        if self.output.high_res and not has_high_res(self.model.name):
            raise ValueError(
                f"output.high_res: expected a model whose decoder takes high-res features "
                f"({', '.join(high_res_models())}), got '{self.model.name}'")
        return self


class AutolabelConfig(JobConfig):
    """`samdata autolabel`: everything mode (class-agnostic masks, `generator`), or with a
    concept model (SAM 3) every instance of each of `prompts.concepts`, with its category."""

    output: MaskOutputConfig
    generator: GeneratorConfig = GeneratorConfig()
    prompts: ConceptPromptsConfig = ConceptPromptsConfig()

    @model_validator(mode="after")
    def _concepts_fit_the_model(self) -> AutolabelConfig:
        concept_model = model_kind(self.model.name) is ConceptModel
        if concept_model and self.prompts.concepts is None:
            raise ValueError(f"prompts.concepts: expected the concept names to label with "
                             f"{self.model.name} (a list, or a file of one name a line), got "
                             f"none")
        if not concept_model and self.prompts.concepts is not None:
            raise ValueError(f"prompts.concepts: expected a concept model "
                             f"({', '.join(models_of_kind(ConceptModel))}) to label concepts, "
                             f"got '{self.model.name}' (everything mode: class-agnostic masks;"
                             f" leave prompts.concepts out)")
        return self


class SegmentConfig(JobConfig):
    """`samdata segment`: prompts -> one mask each (generator: FastSAM's detection_* only)."""

    output: MaskOutputConfig
    prompts: PromptsConfig = PromptsConfig()
    generator: GeneratorConfig = GeneratorConfig()

    @field_validator("model")
    @classmethod
    def _prompted_model(cls, v: ModelConfig) -> ModelConfig:
        return refuse_concept_model(v, "name", "segment")

    @field_validator("prompts")
    @classmethod
    def _usable(cls, v: PromptsConfig, info: ValidationInfo) -> PromptsConfig:
        if v.source != "sa1b" and v.path is None:
            raise ValueError(f"path: expected the {v.source} file or dataset of the prompts, "
                             f"got none")
        if v.source == "coco" and v.use != "box":
            raise ValueError(f"use: expected 'box' with source coco (COCO annotations have no "
                             f"prompt points), got '{v.use}'")
        model = info.data.get("model")
        if model is not None and v.use == "box+point" and model_kind(model.name) is OnePassModel:
            raise ValueError(f"use: expected 'box' or 'point' with {model.name} (FastSAM "
                             f"selects by a box or by points, not by both), got 'box+point'")
        return v


class ReportOutputConfig(Strict):
    path: str  # folder (local or s3://) for results.json, results.md and results.png


LABEL_PROTOCOLS = ("proposals", "concepts")  # evaluate label datasets, no model and no input


class EvaluateConfig(Strict):
    """`samdata evaluate`: the published protocols on a sample of a corpus.

    box / points / agreement read `input` and run `models` (and the `reference` of agreement);
    proposals reads the everything-mode `labels` datasets (row name -> dataset root); concepts
    reads concept-label datasets (`labels`, annotations with a category) against a COCO
    ground truth with categories (ground_truth.source coco)."""

    protocol: Literal["box", "points", "agreement", "proposals", "concepts"]
    input: InputConfig | None = None
    models: list[EvaluatedModel] = []
    reference: ModelConfig | None = None
    labels: dict[str, str] = {}
    ground_truth: GroundTruthConfig = GroundTruthConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    generator: GeneratorConfig = GeneratorConfig()  # FastSAM's detection_* settings
    output: ReportOutputConfig
    compute: ComputeConfig = ComputeConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _complete(self) -> EvaluateConfig:
        if self.ground_truth.source == "coco" and self.ground_truth.path is None:
            raise ValueError("ground_truth.path: expected a COCO instances JSON for "
                             "ground_truth.source coco, got none")
        if self.protocol in LABEL_PROTOCOLS:
            if not self.labels:
                raise ValueError(f"labels: expected at least one label dataset (name: path, "
                                 f"the output of `samdata autolabel`) for {self.protocol}, "
                                 f"got none")
            if self.protocol == "concepts" and self.ground_truth.source != "coco":
                raise ValueError(f"ground_truth.source: expected 'coco' for concepts (a COCO "
                                 f"instances JSON with categories at ground_truth.path), got "
                                 f"'{self.ground_truth.source}'")
            return self
        if self.input is None:
            raise ValueError(f"input: expected the corpus to evaluate on ({self.protocol}), "
                             f"got none")
        for n, m in enumerate(self.models):
            refuse_concept_model(m, f"models[{n}].name", f"evaluate {self.protocol}")
        if self.reference is not None:
            refuse_concept_model(self.reference, "reference.name", f"evaluate {self.protocol}")
        if not self.models:
            raise ValueError(f"models: expected at least one model for {self.protocol}, got "
                             f"none")
        names = [m.row_name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: expected distinct row names (set `label` to tell two "
                             f"of one model apart), got {names}")
        if self.protocol == "agreement" and self.reference is None:
            raise ValueError("reference: expected the reference (teacher) model for "
                             "agreement, got none")
        return self


class DistillConfig(DistillSections):
    """`samdata distill`: the training sections (operators/training/config.py) plus where the
    data is, how Ray Train scales, where the run and the student file go."""

    data: DistillDataConfig
    compute: TrainComputeConfig = TrainComputeConfig()
    output: DistillOutputConfig
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _runnable(self) -> DistillConfig:
        usable = embedding_models()
        for field, name in (("student.name", self.student.name),
                            ("teacher.name", self.teacher.name)):
            if name is not None and name not in usable:
                raise ValueError(f"{field}: expected a model with an image encoder "
                                 f"({', '.join(usable)}), got '{name}'")
            if name is not None and self.stage == 2 and model_kind(name) is ConceptModel:
                raise ValueError(f"stage: expected 1 for a SAM 3 model ({field} '{name}': "
                                 f"stage 2, its detector in the loop on concept prompts, is "
                                 f"not built), got 2")
        concept = any(n is not None and model_kind(n) is ConceptModel
                      for n in (self.student.name, self.teacher.name))
        masks_asked = sorted({"grid", "max_instances"} & self.validation.model_fields_set)
        if concept and masks_asked:
            raise ValueError(f"validation.{masks_asked[0]}: expected none for a SAM 3 pair "
                             f"(it takes text, not point or box prompts: validated on the "
                             f"trunk map's MSE and cosine only), got "
                             f"{getattr(self.validation, masks_asked[0])}")
        if self.uses_teacher and not self.data.embeddings:
            what = "stage 1" if self.stage == 1 else "stage2.targets teacher"
            raise ValueError(f"data.embeddings: expected the teacher's embeddings (a `samdata "
                             f"embed` output) for {what}, got none")
        if self.stage == 2 and not (self.data.corpus or self.data.embeddings):
            raise ValueError("data.corpus: expected the annotated shards for stage 2, got none")
        if self.optim.batch_size % self.compute.workers:
            raise ValueError(f"stage{self.stage}.batch_size: expected a multiple of "
                             f"compute.workers ({self.compute.workers}), got "
                             f"{self.optim.batch_size}")
        return self

def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif "got" not in msg and "input" in e and e["type"] != "missing":
            msg = f"{msg}, got {e['input']!r}"
        lines.append(f"{where}: {msg}" if where else msg)  # a model check names its field
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_config(data: dict, cls: type[BaseModel] = EmbedConfig) -> BaseModel:
    """Validate a dict; raise ConfigError naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of the config, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from e


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                cls: type[BaseModel] = EmbedConfig) -> BaseModel:
    """Read a YAML config (None: start from an empty one), apply `a.b=value` overrides (values
    parsed as YAML), validate. Every problem is a one-line ConfigError naming the field."""
    try:
        data = yaml.safe_load(Path(path).read_text()) if path is not None else {}
    except OSError as e:
        raise ConfigError(f"cannot read config '{path}': {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config '{path}' is not valid YAML: "
                          f"{' '.join(str(e).split())}") from e
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}': expected a mapping of sections, got "
                          f"{type(data).__name__}")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"expected an override KEY=VALUE (e.g. model.name=sam_vit_b), "
                              f"got '{item}'")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: expected a YAML value, got '{value}' "
                              f"({' '.join(str(e).split())})") from e
        node = data
        for n, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:n + 1])}' is a value, not "
                                  f"a section")
        node[parts[-1]] = parsed
    return parse_config(data, cls)
