"""The model registry: a plain dict of builders, and `build_model` that loads checkpoints.

Each builder passes literal sizes to one private `_build_*`; the official ones build the
architectures whose state dicts equal the official checkpoint files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import efficient_sam, efficientvit, sam2, sam3, tiny_vit, yolov8_seg
from .checkpoint import (
    load_state_dict_strict,
    read_checkpoint,
    seeded_state_dict,
    unwrap_state_dict,
)
from .image_encoder import ImageEncoderViT
from .protocols import (
    ConceptModel,
    HighResPromptableModel,
    ModelKind,
    OnePassModel,
    PromptableModel,
)
from .sam import Sam, build_sam


def _build_sam_vit(
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    image_size: int = 1024,
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    decoder_heads: int = 8,
    iou_head_hidden_dim: int = 256,
) -> Sam:
    encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.0,
        out_chans=prompt_embed_dim,
        qkv_bias=True,
        norm_eps=1e-6,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=window_size,
        global_attn_indexes=global_attn_indexes,
    )
    return build_sam(
        encoder,
        prompt_embed_dim=prompt_embed_dim,
        image_size=image_size,
        decoder_mlp_dim=decoder_mlp_dim,
        decoder_heads=decoder_heads,
        iou_head_hidden_dim=iou_head_hidden_dim,
    )


def build_sam_vit_h() -> Sam:
    """SAM ViT-H (641M parameters), official file sam_vit_h_4b8939.pth."""
    return _build_sam_vit(1280, 32, 16, (7, 15, 23, 31))


def build_sam_vit_l() -> Sam:
    """SAM ViT-L (312M parameters), official file sam_vit_l_0b3195.pth."""
    return _build_sam_vit(1024, 24, 16, (5, 11, 17, 23))


def build_sam_vit_b() -> Sam:
    """SAM ViT-B (94M parameters), official file sam_vit_b_01ec64.pth."""
    return _build_sam_vit(768, 12, 12, (2, 5, 8, 11))


def build_sam_tiny() -> Sam:
    """A SAM of the official design at toy sizes for tests and demos on a CPU: 128x128 input,
    8x8x32 embedding, 3x3 windows (so window padding runs), one global block."""
    return _build_sam_vit(
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        image_size=128,
        window_size=3,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_heads=2,
        iou_head_hidden_dim=32,
    )


def build_sam_demo() -> Sam:
    """A SAM of the official design small enough to train on 2 CPU cores in minutes (the
    model `make demo` ships, ~0.5M parameters): 256x256 input, 64x16x16 embedding, four
    blocks with 8x8 windows and a global last block, a 64-wide prompt encoder and decoder
    (64x64 low-resolution masks)."""
    return _build_sam_vit(
        embed_dim=64,
        depth=4,
        num_heads=4,
        global_attn_indexes=(1, 3),
        image_size=256,
        window_size=8,
        prompt_embed_dim=64,
        decoder_mlp_dim=256,
        decoder_heads=4,
        iou_head_hidden_dim=64,
    )


@dataclass(frozen=True)
class ModelEntry:
    """One registry model: its builder, what it can do (a Protocol of models/protocols.py)
    and the official checkpoint file name (None for test configs). Calling the entry builds
    the model with its initialiser's weights."""

    build: Callable[[], nn.Module]
    kind: ModelKind
    official_file: str | None = None

    def __call__(self) -> nn.Module:
        return self.build()


def _entries(builders: dict[str, Callable[[], nn.Module]], kind: ModelKind,
             files: dict[str, str]) -> dict[str, ModelEntry]:
    return {name: ModelEntry(b, kind, files.get(name)) for name, b in builders.items()}


_SAM_FILES = {
    "sam_vit_h": "sam_vit_h_4b8939.pth",
    "sam_vit_l": "sam_vit_l_0b3195.pth",
    "sam_vit_b": "sam_vit_b_01ec64.pth",
}

# Checkpoints samdata trains itself and ships in models/weights/ (name -> file, sha256): the
# README's "The demo model" says how each was made.
SHIPPED_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "sam_demo": ("sam_demo.pt", "436d9f1cf405fabc287f470780c61f4b65f77dd005e2b277894976e144115851"),
}
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def shipped_checkpoint(name: str) -> tuple[str, str]:
    """(local path, sha256) of the checkpoint shipped for `name`. Raises KeyError naming the
    models that have one, FileNotFoundError when the file is missing from the install."""
    if name not in SHIPPED_CHECKPOINTS:
        raise KeyError(f"expected one of {', '.join(SHIPPED_CHECKPOINTS)} (models with a "
                       f"shipped checkpoint), got '{name}'")
    file, sha = SHIPPED_CHECKPOINTS[name]
    path = os.path.join(WEIGHTS_DIR, file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected the shipped checkpoint of {name} at {path}, got no "
                                f"file (an install without models/weights?)")
    return path, sha


MODEL_REGISTRY: dict[str, ModelEntry] = {
    **_entries({"sam_vit_h": build_sam_vit_h, "sam_vit_l": build_sam_vit_l,
                "sam_vit_b": build_sam_vit_b, "sam_tiny": build_sam_tiny,
                "sam_demo": build_sam_demo},
               PromptableModel, _SAM_FILES),
    **_entries(tiny_vit.BUILDERS, PromptableModel, tiny_vit.OFFICIAL_FILES),
    **_entries(efficientvit.BUILDERS, PromptableModel, efficientvit.OFFICIAL_FILES),
    **_entries(efficient_sam.BUILDERS, PromptableModel, efficient_sam.OFFICIAL_FILES),
    # SAM 2.1: PromptableModel, and its decoder needs the high-res features too
    # (models/protocols.py `HighResPromptableModel`)
    **_entries(sam2.BUILDERS, PromptableModel, sam2.OFFICIAL_FILES),
    # students of SAM 2.1: TinyViT or EfficientViT + SAM 2.1's heads (no official file: samdata's
    # own, in SAM 2.1's {"model": sd} format; models/sam2/student.py)
    **_entries(sam2.STUDENT_BUILDERS, PromptableModel, {}),
    **_entries(yolov8_seg.BUILDERS, OnePassModel, yolov8_seg.OFFICIAL_FILES),
    # SAM 3: concept prompts (text) -> every instance; the official file's tracker.* part is
    # declared unused (models/sam3 TRACKER_PREFIXES)
    **_entries(sam3.BUILDERS, ConceptModel, sam3.OFFICIAL_FILES),
    # students of SAM 3: a TinyViT trunk + SAM 3's neck, text encoder and detector (no
    # official file: samdata's own, in sam3.pt's {"model": sd} wrapping; models/sam3/student.py)
    **_entries(sam3.STUDENT_BUILDERS, ConceptModel, {}),
    # SAM 3's box and point prompts: a HighResPromptableModel on the same sam3.pt (the trunk,
    # the neck's SAM 2 branch and the tracker's SAM heads; models/sam3/interactive.py)
    **_entries(sam3.INTERACTIVE_BUILDERS, PromptableModel, sam3.INTERACTIVE_FILES),
}

# Official checkpoint file names, for messages and docs.
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    name: e.official_file for name, e in MODEL_REGISTRY.items() if e.official_file
}


def model_kind(name: str) -> ModelKind:
    """The Protocol registry model `name` follows (PromptableModel or OnePassModel)."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name].kind


def models_of_kind(kind: ModelKind) -> list[str]:
    """Registry names of the models following `kind`, in registry order."""
    return [name for name, e in MODEL_REGISTRY.items() if e.kind is kind]


def has_high_res(name: str) -> bool:
    """Whether registry model `name` is a HighResPromptableModel (SAM 2: its decoder takes
    high-res features beside the embedding); built on the meta device, no weights."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)}")
    with torch.device("meta"):
        return isinstance(MODEL_REGISTRY[name](), HighResPromptableModel)


def high_res_models() -> list[str]:
    """Registry names of the HighResPromptableModels, in registry order."""
    return [name for name, e in MODEL_REGISTRY.items()
            if e.kind is PromptableModel and has_high_res(name)]


def build_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    sha256: str | None = None,
    seed: int | None = None,
    storage_options: dict | None = None,
) -> nn.Module:
    """Build registry model `name` in eval mode on CPU.

    checkpoint: local path or fsspec URL of an official checkpoint file, loaded with
        `weights_only=True` and `strict=True`; `sha256` (hex) is checked when given;
        `storage_options`: fsspec options for a URL (the job's storage section).
    seed: without a checkpoint, fill every tensor with seeded random weights
        (`seeded_state_dict`); with neither, keep the initialiser's weights.

    The model gets `model_name` and `checkpoint_sha256` (None for random weights) attributes.
    """
    if name not in MODEL_REGISTRY:
        valid = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(f"unknown model '{name}': expected one of {valid}")
    model = MODEL_REGISTRY[name]()
    model.eval()
    digest = None
    if checkpoint is not None:
        loader = getattr(model, "checkpoint_loader", None)  # files that are not state dicts
        loaded, digest = read_checkpoint(checkpoint, sha256=sha256, loader=loader,
                                         storage_options=storage_options)
        wrappers = getattr(model, "checkpoint_wrappers", ())
        ignored = getattr(model, "checkpoint_ignored_prefixes", ())  # e.g. SAM 2's video keys
        state = unwrap_state_dict(loaded, wrappers)
        rename = getattr(model, "strip_checkpoint", None)  # e.g. SAM 3: keys under `detector.`
        load_state_dict_strict(model, rename(state) if rename is not None else state, ignored)
    elif seed is not None:
        load_state_dict_strict(model, seeded_state_dict(model, seed))
    # Some modules cache derived tensors in eval(); refresh them after the weights changed.
    model.eval()
    model.model_name = name
    model.checkpoint_sha256 = digest
    return model
