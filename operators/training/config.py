"""The config sections of `samdata distill`, validated before any work (the job config that
composes them is `pipelines.config.DistillConfig`).

Every hyperparameter is a field whose default is a published recipe's, with the source named
beside it (../shared/DISTILLATION.md has the facts):
- stage 1 (encoder distillation): EdgeSAM phase 1, `training/configs/rep_vit_m1_fuse_sa_distill
  .yaml` on TinyViT's trainer defaults, learning rates linearly scaled to the global batch as its
  `train.py` does (lr = BASE_LR x batch / 512): batch 64, AdamW lr 0.1 x 64 / 512 = 1.25e-2,
  cosine to MIN_LR 5e-6 x 64 / 512 = 6.25e-7 after 5 warm-up epochs from WARMUP_LR 5e-7 x 64 /
  512, weight decay 0.01 (none on norms and biases), gradient clip 5.0, 10 epochs.
- stage 2 (mask decoder in the loop): EdgeSAM phase 2, `rep_vit_m1_fuse_enc_dec_4m_ft_bp_
  iter2b_sa_distill.yaml`: batch 16, lr 3.2e-3 x 16 / 512 = 1e-4 -> 1e-5, no warm-up, weight
  decay 0.05, clip 0.01, 5 epochs, 16 prompts an image, one refinement point, 5 BCE + 5 Dice
  against the teacher's masks. On ground truth the loss weights are SAM's (appendix A: 20 focal
  + 1 Dice over the whole mask; EfficientViT-SAM's 20 BCE + 1 Dice is taken on uncertainty-
  sampled points, which this loss does not do, and over every pixel it drowns the objects in
  background); the IoU head is trained with an MSE as SAM's, weight 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ..config import RegistryName, Sha256, ShardRange, Strict, Urls
from ..shards.decode import DEFAULT_MAX_IMAGE_PIXELS

Part = Literal["image_encoder", "prompt_encoder", "mask_decoder"]

# Loss weights per stage-2 target when the config leaves them unset (see the module docstring)
LOSS_RECIPES: dict[str, dict[str, float]] = {
    "teacher": {"bce_weight": 5.0, "focal_weight": 0.0, "dice_weight": 5.0, "iou_weight": 1.0},
    "ground_truth": {"bce_weight": 0.0, "focal_weight": 20.0, "dice_weight": 1.0,
                     "iou_weight": 1.0},
}


class TeacherConfig(Strict):
    """The model that wrote the embeddings; its prompt encoder and mask decoder go into the
    student (stage 1) and make the stage-2 targets from the saved embeddings."""

    name: RegistryName | None = None  # registry name; None: the `model` recorded in the
    #   embeddings
    checkpoint: str | None = None  # its official file (local or fsspec URL); None: random
    sha256: Sha256 = None  # expected digest; the embeddings' checkpoint_sha256 is checked
    seed: int = 0  # random teacher weights (no checkpoint): the embed job's model.seed


class StudentConfig(Strict):
    """The model trained: any registry model with an image encoder."""

    name: RegistryName = "mobile_sam"  # registry name
    checkpoint: str | None = None  # start from this file (its official format); None: seed
    sha256: Sha256 = None
    seed: int = 0  # random initial weights: the modules' initialisers under this torch seed


class DistillDataConfig(Strict):
    """Where the training data is. Stage 1 reads `embeddings` (images from its `image_jpeg`
    column, else from `corpus`); stage 2 reads prompts and ground truth from the SA-1B json of
    `corpus`, and teacher targets from `embeddings`."""

    embeddings: str | None = None  # a `samdata embed` output root (local or s3://)
    corpus: Urls | None = None  # the shards the teacher saw: tars, globs, folders
    shards: ShardRange = None  # inclusive shard-name range, e.g. "sa_000000..sa_000009"
    limit: int | None = Field(default=None, ge=1)  # at most this many shards
    val_shards: int = Field(default=1, ge=0)  # the last N shards (by name) validate only
    format: Literal["auto", "sa1b", "webdataset", "folder"] = "auto"
    max_image_pixels: int = Field(default=DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    shuffle_buffer: int = Field(default=256, ge=0)  # rows of the local shuffle (0: off)
    prefetch_batches: int = Field(default=2, ge=0)  # batches Ray Data prepares ahead
    rows_per_pass: int = Field(default=8192, ge=1)  # a pass over the training data (one Ray
    #   Data execution) repeats the shards, reshuffled, until it holds this many rows, so a
    #   small corpus does not restart the pipeline every epoch; a large one passes once


class OptimConfig(Strict):
    """AdamW with linear warm-up and cosine decay, gradient clipping. Defaults: stage 1's."""

    batch_size: int = Field(default=64, ge=1)  # global images a step (split over workers)
    epochs: float = Field(default=10, gt=0)  # passes over the training shards
    steps: int | None = Field(default=None, ge=1)  # total steps; None: from epochs
    lr: float = Field(default=1.25e-2, gt=0)  # peak learning rate
    min_lr: float = Field(default=6.25e-7, ge=0)  # end of the cosine
    warmup_lr: float = Field(default=6.25e-8, ge=0)  # start of the linear warm-up
    warmup_epochs: float = Field(default=5, ge=0)  # warm-up length (of `epochs`)
    weight_decay: float = Field(default=0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW, TinyViT/EfficientViT defaults
    eps: float = Field(default=1e-8, gt=0)
    decay_norms_and_biases: bool = False  # TinyViT/EfficientViT skip them (1-d parameters)
    grad_clip: float | None = Field(default=5.0, gt=0)  # max global grad norm; None: off
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, else fp32
    seed: int = 0  # prompts, shuffles and dropout (per rank: seed + rank)


class Stage1Config(OptimConfig):
    """Encoder distillation (MobileSAM's decoupled distillation with EdgeSAM's masked MSE):
    only the image encoder trains; the loss is the MSE to the teacher embedding over the
    un-padded cells of the grid. A SAM 2 student (its decoder takes high-res maps too) also
    learns the teacher's high-res maps when the corpus holds them (embed output.high_res)."""

    high_res_weight: float = Field(default=1.0, ge=0)  # SAM 2 students: weight of the MSE
    #   to each of the teacher's high-res maps (high_res_0, high_res_1 of the corpus) beside
    #   the embedding's; 0 or a corpus without them: the embedding only


class Stage2Config(OptimConfig):
    """The mask decoder in the loop (EdgeSAM phase 2; on ground truth EfficientViT-SAM stage 2
    and SAM's recipe)."""

    batch_size: int = Field(default=16, ge=1)  # EdgeSAM phase 2: 16 images
    epochs: float = Field(default=5, gt=0)
    lr: float = Field(default=1e-4, gt=0)  # 3.2e-3 x 16 / 512
    min_lr: float = Field(default=1e-5, ge=0)
    warmup_lr: float = Field(default=1e-6, ge=0)
    warmup_epochs: float = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    grad_clip: float | None = Field(default=0.01, gt=0)

    targets: Literal["teacher", "ground_truth"] = "teacher"  # teacher: its decoder's masks on
    #   the saved embeddings (no teacher encoder pass); ground_truth: the annotations' masks
    trainable: list[Part] = ["image_encoder", "mask_decoder"]  # EdgeSAM freezes the prompt
    #   encoder; from scratch on ground truth, train all three
    instances_per_image: int = Field(default=16, ge=1)  # EdgeSAM: 16 (EfficientViT-SAM: 64)
    box_share: float = Field(default=0.5, ge=0, le=1)  # steps prompted by boxes, else points
    max_points: int = Field(default=10, ge=1)  # points prompts: 1..max_points positives
    box_noise: float = Field(default=0.1, ge=0)  # SAM: noise std 10% of the box side ...
    box_noise_max: float = Field(default=20.0, ge=0)  # ... at most 20 px (prompt frame)
    multimask: bool = True  # 3 outputs: ground truth takes the min loss over them, teacher
    #   targets are matched output by output (EdgeSAM)
    refine_iters: int = Field(default=1, ge=0)  # EdgeSAM: 1 point in the disagreement region
    max_mask_area: float = Field(default=0.9, gt=0, le=1)  # SAM drops masks over 90% of image
    mask_size: int | None = Field(default=None, ge=8)  # loss resolution in the prompt frame;
    #   None: the decoder's low-res size (256 for the 1024 models, 32 for the tiny ones)
    bce_weight: float | None = Field(default=None, ge=0)  # None: LOSS_RECIPES[targets]
    focal_weight: float | None = Field(default=None, ge=0)
    dice_weight: float | None = Field(default=None, ge=0)
    iou_weight: float | None = Field(default=None, ge=0)

    @field_validator("trainable")
    @classmethod
    def _some(cls, v):
        if not v:
            raise ValueError("expected at least one of image_encoder, prompt_encoder, "
                             "mask_decoder, got none")
        return sorted(set(v), key=v.index)

    def weights(self) -> dict[str, float]:
        """The loss weights in force: the fields set, else the recipe of `targets`."""
        recipe = LOSS_RECIPES[self.targets]
        return {k: recipe[k] if getattr(self, k) is None else float(getattr(self, k))
                for k in recipe}


class ValidationConfig(Strict):
    """Held-out checks logged during training (on rank 0, the held-out shards)."""

    every: int = Field(default=500, ge=1)  # steps between validations (and one at the end)
    images: int = Field(default=64, ge=1)  # at most this many held-out images a validation
    grid: int = Field(default=4, ge=1)  # agreement: a grid x grid of single positive points
    max_instances: int = Field(default=32, ge=1)  # box mIoU: ground-truth instances an image


class TrainComputeConfig(Strict):
    """Ray Train's ScalingConfig, FailureConfig and logging."""

    workers: int = Field(default=1, ge=1)  # training workers (one per GPU on a GPU cluster)
    use_gpu: bool | Literal["auto"] = "auto"  # auto: when the cluster has GPUs
    gpus_per_worker: float = Field(default=1.0, gt=0)  # with use_gpu
    cpus_per_worker: float = Field(default=1.0, gt=0)  # the rest of the CPUs decode data
    max_failures: int = Field(default=3, ge=-1)  # worker-group restarts (-1: unlimited)
    log_every: int = Field(default=50, ge=1)  # steps between progress lines / reports


class DistillOutputConfig(Strict):
    """Where the run lives: Ray Train's RunConfig(storage_path=path, name=name) holds its
    checkpoints (a rerun with the same path and name resumes), and the student file."""

    path: str  # storage_path: local folder or s3://bucket/prefix (shared storage on clusters)
    name: str = "distill"  # run name: a folder under path
    checkpoint_every: int = Field(default=1000, ge=1)  # steps between checkpoints
    keep: int = Field(default=2, ge=1)  # checkpoints kept
    checkpoint: str | None = None  # the student file; None: {path}/{name}/{student}.pt

    @field_validator("name")
    @classmethod
    def _plain(cls, v):
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"expected a folder name without '/', got '{v}'")
        return v


class DistillSections(Strict):
    """What the training loop needs, validated once on the driver and handed to every worker
    (`pipelines.config.DistillConfig` is this plus data, compute, output, ray and storage)."""

    stage: Literal[1, 2] = 1
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    validation: ValidationConfig = ValidationConfig()

    @property
    def optim(self) -> OptimConfig:
        """The active stage's section."""
        return self.stage1 if self.stage == 1 else self.stage2

    @property
    def uses_teacher(self) -> bool:
        """Whether the run needs the teacher (stage 1, or stage 2 on its masks)."""
        return self.stage == 1 or self.stage2.targets == "teacher"
