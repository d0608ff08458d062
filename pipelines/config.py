"""Job configs: pydantic models validated before any work starts, composed of the sections
that operators consume (operators/config.py), and their YAML loading.

A bad value is refused naming the field and what was expected, e.g.
`model.precision: expected one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp64'`.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError, field_validator

from models import PromptableModel, models_of_kind
from operators.config import (
    ComputeConfig,
    EmbedOutputConfig,
    GeneratorConfig,
    InputConfig,
    MaskOutputConfig,
    ModelConfig,
    RayConfig,
    StorageConfig,
    Strict,
)

__all__ = ["AutolabelConfig", "ComputeConfig", "ConfigError", "EmbedConfig",
           "EmbedOutputConfig", "GeneratorConfig", "InputConfig", "JobConfig",
           "MaskOutputConfig", "ModelConfig", "RayConfig", "StorageConfig", "load_config",
           "parse_config"]


class ConfigError(ValueError):
    """A config that cannot run; the message names every bad field."""


class JobConfig(Strict):
    """What every sharded job has: where to read, which model, how to run."""

    input: InputConfig
    model: ModelConfig = ModelConfig()
    compute: ComputeConfig = ComputeConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()


def embedding_models() -> list[str]:
    """Registry models that have an image embedding (the promptable ones)."""
    return models_of_kind(PromptableModel)


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


class AutolabelConfig(JobConfig):
    output: MaskOutputConfig
    generator: GeneratorConfig = GeneratorConfig()


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif "got" not in msg and "input" in e and e["type"] != "missing":
            msg = f"{msg}, got {e['input']!r}"
        lines.append(f"{where}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_config(data: dict, cls: type[BaseModel] = EmbedConfig) -> BaseModel:
    """Validate a dict; raise ConfigError naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top of the config, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from e


def load_config(path: str | Path, overrides: list[str] | None = None,
                cls: type[BaseModel] = EmbedConfig) -> BaseModel:
    """Read a YAML config, apply `a.b=value` overrides (values parsed as YAML), validate."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config '{path}': {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config '{path}' is not valid YAML: {e}") from e
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected an override KEY=VALUE (e.g. model.name=sam_vit_b), "
                              f"got '{item}'")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return parse_config(data, cls)
