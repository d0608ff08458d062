"""The config sections that operators consume, as pydantic models validated before any work.

A value keeps its YAML name down to its last consumer: actors and generators receive these
sections (e.g. `MaskGenerator(model, generator=GeneratorConfig, batch_size=model.batch_size)`),
never a re-spelled copy of their fields, and each default is declared here once. The job
configs that compose them (and the YAML loading) live in pipelines/config.py.

A bad value is refused naming the field and what was expected, e.g.
`model.precision: expected one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp64'`.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .shards.decode import DEFAULT_MAX_IMAGE_PIXELS

CPU_BATCH = 4  # model.batch_size "auto" on a CPU: larger batches buy nothing there


def _registry_name(v: str | None) -> str | None:
    from models import MODEL_REGISTRY

    if v is not None and v not in MODEL_REGISTRY:
        raise ValueError(f"expected one of {', '.join(MODEL_REGISTRY)}, got '{v}'")
    return v


def _hex64(v: str | None) -> str | None:
    if v is not None and (len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v)):
        raise ValueError(f"expected 64 hex digits, got '{v}'")
    return v


def _one_url(v):
    return [v] if isinstance(v, str) else v


def _shard_range(v: str | None) -> str | None:
    if v is not None:
        from .shards.listing import parse_range

        parse_range(v)
    return v


# Field types shared by the sections that name shards (input, data)
Urls = Annotated[list[str], BeforeValidator(_one_url)]  # one URL may be given as a string
ShardRange = Annotated[str | None, AfterValidator(_shard_range)]  # "sa_000000..sa_000009"
# Field types shared by every section that names a model (model, teacher, student)
RegistryName = Annotated[str, AfterValidator(_registry_name)]  # a `samdata models` name
Sha256 = Annotated[str | None, AfterValidator(_hex64)]  # a checkpoint file's hex digest


class Strict(BaseModel):
    """A config section: unknown fields are refused (a misspelt knob is never ignored)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)


class StorageConfig(Strict):
    """Object-store access and what to do when it fails. Credentials come from the usual AWS
    variables, a profile or the machine's role (instance profile, IRSA, a Kubernetes Secret);
    they are never printed or written.

    Three layers of retries, innermost first: botocore retries each request
    (`request_attempts`, `retry_mode`), s3fs re-fetches a broken body (5 times, its own), and
    samdata re-opens a shard's byte stream at its offset with exponential backoff and jitter
    (`read_retries`, `retry_backoff_s` doubling up to `retry_backoff_max_s`) when a failure
    outlasts both. A shard that still cannot be read is left uncommitted (a rerun redoes it)."""

    endpoint_url: str | None = None  # S3-compatible stores (MinIO, moto, R2, ...)
    anon: bool = False
    region: str | None = None  # e.g. us-west-2 (None: the AWS default chain)
    request_attempts: int = Field(default=5, ge=1)  # botocore attempts per request
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"  # botocore retry mode
    read_timeout_s: float = Field(default=60.0, gt=0)  # a stalled body fails after this
    read_retries: int = Field(default=8, ge=0)  # samdata re-opens of a shard's stream
    retry_backoff_s: float = Field(default=1.0, ge=0)  # first backoff; doubles each time
    retry_backoff_max_s: float = Field(default=60.0, ge=0)  # longest single backoff
    block_size: int | None = Field(default=None, ge=1 << 16)  # bytes per ranged GET (s3fs's
    #   default_block_size; None: s3fs's 50 MiB, so an SA-1B shard is ~200 GETs)

    def options(self) -> dict:
        """fsspec storage options for s3:// URLs (local paths ignore them)."""
        client: dict = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        opts: dict = {
            "config_kwargs": {"retries": {"max_attempts": self.request_attempts,
                                          "mode": self.retry_mode},
                              "read_timeout": self.read_timeout_s},
        }
        if client:
            opts["client_kwargs"] = client
        if self.block_size:
            opts["default_block_size"] = self.block_size
        if self.anon:
            opts["anon"] = True
        return opts


class InputConfig(Strict):
    urls: Urls = Field(min_length=1)  # tar files, globs, folders; local or s3://
    shards: ShardRange = None  # inclusive name range, e.g. "sa_000000..sa_000009"
    limit: int | None = Field(default=None, ge=1)  # at most this many shards
    format: Literal["auto", "sa1b", "webdataset", "folder"] = "auto"
    # refuse larger images (decompression bombs)
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    jpeg_draft: bool = False  # embed: decode JPEGs at 1/2..1/8 scale when still >= the
    #   model input (2-3x less decode; model input within 0.25 mean |diff|, short side +-1 px)
    images_per_task: int = Field(default=256, ge=1)  # samples per read task: a shard holding
    #   more is cut into pieces read in parallel (the shard stays the unit of commit/resume)
    decode: Literal["cpu", "device"] = "cpu"  # embed: "device" ships JPEG bytes to the model
    #   actor, which decodes them on its GPU (torchvision.io.decode_jpeg; CUDA required)


class ModelConfig(Strict):
    name: RegistryName = "sam_vit_h"  # registry name (`samdata models`)
    checkpoint: str | None = None  # official file: local path or fsspec URL; None = random
    sha256: Sha256 = None  # expected digest of the checkpoint file
    seed: int = 0  # random weights' seed when no checkpoint is given
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 CPU
    # images (autolabel: crops) per encoder call; auto: the largest power of two that fits the
    # GPU's free memory (probed per actor), capped by compute.ray_batch_size; CPU_BATCH on a CPU
    batch_size: int | Literal["auto"] = 8
    compile: bool = False  # torch.compile the image encoder (GPU runs; first batch compiles)
    channels_last: bool = False  # NHWC encoder weights: conv encoders (mobile_sam, efficientvit)
    # SAM 3's tokenizer vocabulary (the official bpe_simple_vocab_16e6.txt.gz, or a file of its
    # format): local path or fsspec URL; None: that file name beside the checkpoint
    vocabulary: str | None = None

    VOCABULARY_FILE: ClassVar[str] = "bpe_simple_vocab_16e6.txt.gz"

    def vocabulary_path(self) -> str | None:
        """Where a concept model reads its vocabulary: `vocabulary`, else the official file
        name in the checkpoint's folder; None when neither is known (random weights and no
        vocabulary given)."""
        if self.vocabulary:
            return self.vocabulary
        if self.checkpoint:
            return f"{self.checkpoint.rsplit('/', 1)[0]}/{self.VOCABULARY_FILE}" \
                if "/" in self.checkpoint else self.VOCABULARY_FILE
        return None

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"expected 'auto' or an integer >= 1, got {v}")
        return v


class ComputeConfig(Strict):
    actors: int | Literal["auto"] = "auto"  # auto: one per cluster GPU, else 1
    gpus_per_actor: float | Literal["auto"] = "auto"  # auto: 1 if the cluster has GPUs, else 0
    cpus_per_actor: float = Field(default=1.0, gt=0)  # leave CPUs for the decode tasks
    ray_batch_size: int = Field(default=16, ge=1)  # rows per actor call (caps batch_size auto)
    max_tasks_in_flight_per_actor: int = Field(default=2, ge=1)
    # a model actor that dies (killed for memory, its node lost) is restarted and its call
    # retried this many times; past that the job stops, committed shards kept, the rest named
    # for a rerun (never an endless restart loop)
    actor_restarts: int = Field(default=3, ge=0)

    @field_validator("actors")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"expected 'auto' or an integer >= 1, got {v}")
        return v


class RayConfig(Strict):
    address: str | None = None  # None: start (or join) a local Ray; "auto" inside a cluster job
    num_cpus: int | None = Field(default=None, ge=1)  # local Ray only


class EmbedOutputConfig(Strict):
    path: str  # dataset root: local folder or s3://bucket/prefix
    dtype: Literal["float16", "float32"] = "float16"  # embedding dtype
    include_image: bool = False  # also store the resized input as JPEG bytes (q95)
    high_res: bool = False  # also store a SAM 2 model's high-res feature maps (the stride-4
    #   and stride-8 maps its decoder takes: columns high_res_0, high_res_1 in `dtype`, 4 MiB +
    #   2 MiB an image at fp16 beside the embedding's 2 MiB); HighResPromptableModels only


class MaskOutputConfig(Strict):
    path: str  # dataset root: local folder or s3://bucket/prefix


class GeneratorConfig(Strict):
    """Everything-mode parameters; defaults equal segment-anything's SamAutomaticMaskGenerator
    (grid fields) and FastSAM's (detection_* fields). SAM 2's SAM2AutomaticMaskGenerator has
    the same defaults but pred_iou_thresh 0.8 (set it for SAM 2.1 labels as the official
    ones) and adds use_m2m; its min_mask_region_area fills holes in the low-res masks instead
    (here: SAM 1's cleanup of the full-size masks, off by default in both)."""

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
    use_m2m: bool = False  # SAM 2's refinement: each grid mask decoded again with itself as
    #   the mask prompt (single-mask output) before the filters; models with a mask prompt
    # One-pass models (FastSAM) use these instead of the point grid; defaults are FastSAM's
    detection_conf: float = Field(default=0.4, ge=0, le=1)  # detection confidence threshold
    detection_iou: float = Field(default=0.9, ge=0, le=1)  # class-agnostic NMS threshold
    detection_imgsz: int = Field(default=1024, ge=32)  # letterbox size (longest side)
    # Throughput and device-memory knobs (not stored with the labels: results do not change)
    decoder_batch_size: int | None = Field(default=None, ge=1)  # prompts per decoder call,
    #   across crops and images (None: points_per_batch)
    upscale_batch_size: int = Field(default=64, ge=1)  # masks upscaled to full size at once,
    #   at most: fewer on large images (runtime.batch_size.MASK_PIXEL_BUDGET pixels a chunk)

    GRID_FIELDS: ClassVar[tuple[str, ...]] = (
        "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
        "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
        "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area")
    ONE_PASS_FIELDS: ClassVar[tuple[str, ...]] = (
        "detection_conf", "detection_iou", "detection_imgsz", "stability_score_offset")

    def settings(self, one_pass: bool) -> dict:
        """The parameters that decide the labels of a model of this kind (stored with them):
        the grid fields for prompt-based models (and use_m2m when on: SAM 1's generator has
        no such parameter), the detection fields for one-pass models."""
        names = self.ONE_PASS_FIELDS if one_pass else self.GRID_FIELDS
        out = {name: getattr(self, name) for name in names}
        if not one_pass and self.use_m2m:
            out["use_m2m"] = True
        return out


class PromptsConfig(Strict):
    """`samdata segment`: where each image's prompts come from and how they become masks."""

    # sa1b: the shard's own json (annotations' bbox / point_coords); coco: an instances JSON
    # at `path` (images matched to sample keys by file name); parquet: a dataset at `path`
    # with `key`, `boxes` (XYXY), optional `points`, `labels`, `category`, `score`
    source: Literal["sa1b", "coco", "parquet"] = "sa1b"
    path: str | None = None  # coco / parquet: local path or fsspec URL
    use: Literal["box", "point", "box+point"] = "box"  # which parts of a prompt to give
    multimask: bool = True  # SAM design: 3 masks, keep the highest predicted IoU; False: the
    #   single-mask output. FastSAM selects among its everything-mode masks instead
    decoder_batch_size: int = Field(default=64, ge=1)  # prompts per decoder call, across
    #   the images of an actor call (SAM's decoder: ~25 MB a prompt in fp32)
    upscale_batch_size: int = Field(default=64, ge=1)  # masks made at full size at once, at
    #   most: fewer on large images (runtime.batch_size.MASK_PIXEL_BUDGET pixels a chunk)

    @field_validator("path")
    @classmethod
    def _no_empty(cls, v):
        if v is not None and not v.strip():
            raise ValueError("expected a path or URL, got an empty string")
        return v


class ConceptPromptsConfig(Strict):
    """`samdata autolabel` with a concept model (SAM 3): the concepts to label, each instance
    above the score threshold becomes an annotation with the concept as its category."""

    # the names, in order (category ids 1..N), or a text file (local path or fsspec URL) with
    # one name a line (blank lines and lines starting with # skipped)
    concepts: list[str] | str | None = None
    score_threshold: float = Field(default=0.5, ge=0, le=1)  # the official processor's default
    pairs_per_batch: int = Field(default=16, ge=1)  # (image, concept) pairs per detector call
    upscale_batch_size: int = Field(default=64, ge=1)  # masks made at full size at once, at
    #   most: fewer on large images (runtime.batch_size.MASK_PIXEL_BUDGET pixels a chunk)

    @field_validator("concepts")
    @classmethod
    def _names(cls, v):
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("expected a list of names or a file of them, got ''")
            return v
        if v is not None:
            return check_concepts(v)
        return v


def check_concepts(names: list[str]) -> list[str]:
    """Concept names stripped; ValueError for an empty list, an empty name or a repeated one
    (compared case-insensitively: the same category twice would split its instances)."""
    out = [n.strip() for n in names]
    if not out:
        raise ValueError("expected at least one concept name, got an empty list")
    if any(not n for n in out):
        raise ValueError(f"expected non-empty names, got {names!r:.120}")
    seen: dict[str, str] = {}
    for n in out:
        if n.lower() in seen:
            raise ValueError(f"expected distinct names, got '{seen[n.lower()]}' and '{n}'")
        seen[n.lower()] = n
    return out


def parse_concepts_file(text: str) -> list[str]:
    """A concepts file's text -> its names (one a line; blank lines and # comments skipped)."""
    return check_concepts([line for line in (raw.strip() for raw in text.splitlines())
                           if line and not line.startswith("#")])


class EvaluatedModel(ModelConfig):
    """A model of `samdata evaluate`: a `model` section plus the name of its row in the
    report (default: the registry name), so two checkpoints of one architecture can be
    compared."""

    label: str | None = None

    @property
    def row_name(self) -> str:
        return self.label or self.name


class GroundTruthConfig(Strict):
    """`samdata evaluate`: the ground truth. sa1b: the `annotations` of each sample's json in
    the shards (SA-1B's masks are themselves SAM output: "ground truth" there means the
    released annotation); coco: an instances JSON at `path`, images matched to sample keys by
    file name."""

    source: Literal["sa1b", "coco"] = "sa1b"
    path: str | None = None  # coco: local path or fsspec URL of the instances JSON


class EvaluationConfig(Strict):
    """`samdata evaluate`: which images and the protocols' free parameters (everything else is
    fixed by the protocols, see operators/evaluation/)."""

    sample: int = Field(default=1000, ge=1)  # images drawn (seeded) from the corpus
    all: bool = False  # every image instead of a sample
    seed: int = 0  # the sample and the agreement points
    clicks: list[int] = Field(default=[1, 3, 5], min_length=1)  # points: mIoU after these
    agreement_points: int = Field(default=16, ge=0)  # agreement: seeded single positive
    #   points per image, besides the ground-truth boxes
    decoder_batch_size: int = Field(default=64, ge=1)  # prompts per decoder call
    upscale_batch_size: int = Field(default=64, ge=1)  # masks made at full size at once
    # proposals: an image a label dataset has an error row for (its labeller failed) counts
    # with recall 0 ("zero", the honest number), or is left out of every row and reported
    # apart ("exclude")
    failed_labels: Literal["zero", "exclude"] = "zero"

    @field_validator("clicks")
    @classmethod
    def _clicks(cls, v):
        if any(c < 1 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"expected distinct click counts >= 1, got {v}")
        return sorted(v)
