"""Job configs: pydantic models validated before any work starts.

A bad value is refused naming the field and what was expected, e.g.
`model.precision: expected one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp64'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A config that cannot run; the message names every bad field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StorageConfig(_Strict):
    """Object-store access. Credentials come from the usual AWS variables (or instance roles);
    they are forwarded to Ray workers but never printed or written."""

    endpoint_url: str | None = None  # S3-compatible stores (MinIO, moto, R2, ...)
    anon: bool = False

    def options(self) -> dict:
        """fsspec storage options for s3:// URLs (empty when nothing is set)."""
        opts: dict = {}
        if self.endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": self.endpoint_url}
        if self.anon:
            opts["anon"] = True
        return opts


class InputConfig(_Strict):
    urls: list[str] = Field(min_length=1)  # tar files, globs, folders; local or s3://
    shards: str | None = None  # inclusive name range, e.g. "sa_000000..sa_000009"
    limit: int | None = Field(default=None, ge=1)  # at most this many shards
    format: Literal["auto", "sa1b", "webdataset", "folder"] = "auto"
    max_image_pixels: int = Field(default=100_000_000, ge=1)  # refuse larger images (bombs)
    jpeg_draft: bool = False  # embed: decode JPEGs at 1/2..1/8 scale when still >= the
    #   model input (2-3x less decode; model input within 0.25 mean |diff|, short side +-1 px)

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("shards")
    @classmethod
    def _range(cls, v):
        if v is not None:
            from operators.shards import parse_range

            parse_range(v)
        return v


class ModelConfig(_Strict):
    name: str = "sam_vit_h"  # registry name (`samdata models`)
    checkpoint: str | None = None  # official file: local path or fsspec URL; None = random
    sha256: str | None = None  # expected digest of the checkpoint file
    seed: int = 0  # random weights' seed when no checkpoint is given
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 CPU
    # images (autolabel: crops) per encoder call; auto: the largest power of two that fits the
    # GPU's free memory (probed per actor), capped by compute.ray_batch_size; 4 on a CPU
    batch_size: int | Literal["auto"] = 8
    compile: bool = False  # torch.compile the image encoder (GPU runs; first batch compiles)
    channels_last: bool = False  # NHWC encoder weights: conv encoders (mobile_sam, efficientvit)

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        from models import MODEL_REGISTRY

        if v not in MODEL_REGISTRY:
            raise ValueError(f"expected one of {', '.join(MODEL_REGISTRY)}, got '{v}'")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"expected 'auto' or an integer >= 1, got {v}")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v):
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v)):
            raise ValueError(f"expected 64 hex digits, got '{v}'")
        return v


class OutputConfig(_Strict):
    path: str  # dataset root: local folder or s3://bucket/prefix
    dtype: Literal["float16", "float32"] = "float16"  # embedding dtype
    include_image: bool = False  # also store the resized input as JPEG bytes (q95)


class ComputeConfig(_Strict):
    actors: int | Literal["auto"] = "auto"  # auto: one per cluster GPU, else 1
    gpus_per_actor: float | Literal["auto"] = "auto"  # auto: 1 if the cluster has GPUs, else 0
    cpus_per_actor: float = Field(default=1.0, gt=0)  # leave CPUs for the decode tasks
    ray_batch_size: int = Field(default=16, ge=1)  # rows per actor call
    max_tasks_in_flight_per_actor: int = Field(default=2, ge=1)

    @field_validator("actors")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"expected 'auto' or an integer >= 1, got {v}")
        return v


class RayConfig(_Strict):
    address: str | None = None  # None: start (or join) a local Ray; "auto" inside a cluster job
    num_cpus: int | None = Field(default=None, ge=1)  # local Ray only


class _JobConfig(_Strict):
    """What every sharded job has: where to read, which model, how to run."""

    input: InputConfig
    model: ModelConfig = ModelConfig()
    compute: ComputeConfig = ComputeConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()


def embedding_models() -> list[str]:
    """Registry models that have an image embedding (all but the one-pass FastSAM models)."""
    import torch

    from models import MODEL_REGISTRY

    names = []
    for name, builder in MODEL_REGISTRY.items():
        with torch.device("meta"):  # no weights, no memory
            if hasattr(builder(), "embed_images"):
                names.append(name)
    return names


class EmbedConfig(_JobConfig):
    output: OutputConfig

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


class GeneratorConfig(_Strict):
    """Everything-mode parameters; defaults equal segment-anything's SamAutomaticMaskGenerator."""

    points_per_side: int = Field(default=32, ge=1)  # grid of points_per_side**2 prompts
    points_per_batch: int = Field(default=64, ge=1)  # prompts per decoder call
    pred_iou_thresh: float = 0.88  # keep masks whose predicted IoU is above (<= 0: off)
    stability_score_thresh: float = 0.95  # keep masks at least this stable (<= 0: off)
    stability_score_offset: float = Field(default=1.0, ge=0)
    box_nms_thresh: float = Field(default=0.7, ge=0, le=1)  # NMS within a crop
    crop_n_layers: int = Field(default=0, ge=0, le=4)  # extra layers of (2**i)**2 crops
    crop_nms_thresh: float = Field(default=0.7, ge=0, le=1)  # NMS across crops
    crop_overlap_ratio: float = Field(default=512 / 1500, ge=0, lt=1)
    crop_n_points_downscale_factor: int = Field(default=1, ge=1)
    min_mask_region_area: int = Field(default=0, ge=0)  # fill holes/drop islands below (px)
    # One-pass models (FastSAM) use these instead of the point grid; defaults are FastSAM's
    detection_conf: float = Field(default=0.4, ge=0, le=1)  # detection confidence threshold
    detection_iou: float = Field(default=0.9, ge=0, le=1)  # class-agnostic NMS threshold
    detection_imgsz: int = Field(default=1024, ge=32)  # letterbox size (longest side)
    # Throughput and device-memory knobs (not stored with the labels: results do not change)
    decoder_batch_size: int | None = Field(default=None, ge=1)  # prompts per decoder call,
    #   across crops and images (None: points_per_batch)
    upscale_batch_size: int = Field(default=64, ge=1)  # masks upscaled to full size at once

    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"decoder_batch_size",
                                                          "upscale_batch_size"})

    def settings(self) -> dict:
        """The generator parameters proper, without the runtime knobs; each model takes the
        ones of its kind (grid fields for prompt-based models, detection_* for one-pass)."""
        return self.model_dump(exclude=set(self.RUNTIME_FIELDS))


class AutolabelOutputConfig(_Strict):
    path: str  # dataset root: local folder or s3://bucket/prefix


class AutolabelConfig(_JobConfig):
    output: AutolabelOutputConfig
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
