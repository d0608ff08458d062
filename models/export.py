"""Writing checkpoint files in a model's official format, and moving a prompt encoder and mask
decoder ("heads") between SAM-family models. Torch only: callers hand a path or a binary file.

The official formats (what `build_model` and the official code load):
- SAM, MobileSAM: the plain state dict (`sam_vit_h_4b8939.pth`, `mobile_sam.pt`);
- EfficientViT-SAM: `{"state_dict": sd}` (the trainer's files), EfficientSAM: `{"model": sd}`;
that is, the state dict under the model's first `checkpoint_wrappers` key when it has one.

The heads are the tensors under a model's `head_prefixes` (SAM 1 designs: `HEAD_PREFIXES`;
SAM 2.1 and its students: `sam_prompt_encoder.`, `sam_mask_decoder.` with its high-res
projections `conv_s0`/`conv_s1` and object-score head, and `no_mem_embed`, which the
embedding carries).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import BinaryIO

import torch
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint, unwrap_state_dict
from .registry import MODEL_REGISTRY, build_model

HEAD_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of `model`'s heads: its `head_prefixes`, else HEAD_PREFIXES."""
    return tuple(getattr(model, "head_prefixes", HEAD_PREFIXES))


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The prompt encoder's and mask decoder's tensors of `model`, as CPU copies (the names
    keep their prefixes, `head_prefixes(model)`)."""
    prefixes = head_prefixes(model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if k.startswith(prefixes)}


def check_heads(model: nn.Module, heads: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise CheckpointError unless `heads` has exactly the head keys of `model` with its
    shapes; `what` names the heads' origin in the message."""
    prefixes = head_prefixes(model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if k.startswith(prefixes)}
    got = {k: tuple(v.shape) for k, v in heads.items()}
    if expected == got:
        return
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: expected {expected[k]}, got {got[k]}" for k in expected
              if k in got and got[k] != expected[k]]
    parts = [f"the prompt encoder and mask decoder of {what} do not fit "
             f"{getattr(model, 'model_name', type(model).__name__)}:"]
    if missing:
        parts.append(f"missing ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        parts.append(f"unexpected ({len(unexpected)}): {', '.join(unexpected[:8])}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {', '.join(shapes[:8])}")
    raise CheckpointError("\n  ".join(parts))


@torch.no_grad()
def transplant_heads(model: nn.Module, heads: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy `heads` (prefixed prompt-encoder and mask-decoder tensors) into `model` in place,
    bit for bit; the image encoder is untouched. Checked first with `check_heads`."""
    check_heads(model, heads, what)
    state = model.state_dict()
    for k, v in heads.items():
        state[k].copy_(v)
    model.eval()  # modules that cache derived tensors refresh them (see build_model)


def load_heads(name: str, checkpoint: str | os.PathLike | None = None,
               sha256: str | None = None, seed: int | None = 0,
               storage_options: dict | None = None
               ) -> tuple[dict[str, torch.Tensor], str | None]:
    """The prompt encoder and mask decoder of registry model `name` as loaded by
    `build_model(name, checkpoint, sha256, seed)`, without materialising its image encoder
    when a checkpoint is given (a ViT-H teacher's heads are 4M of its 641M parameters).
    storage_options: fsspec options for a checkpoint URL (the job's storage section).

    Returns (head tensors on CPU, the checkpoint's sha256 or None for random weights)."""
    if checkpoint is None:
        model = build_model(name, seed=seed)
        return head_state_dict(model), None
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)}")
    with torch.device("meta"):
        skeleton = MODEL_REGISTRY[name]()
    skeleton.model_name = name
    loader = getattr(skeleton, "checkpoint_loader", None)
    loaded, digest = read_checkpoint(checkpoint, sha256=sha256, loader=loader,
                                     storage_options=storage_options)
    state = unwrap_state_dict(loaded, getattr(skeleton, "checkpoint_wrappers", ()))
    rename = getattr(skeleton, "strip_checkpoint", None)  # e.g. SAM 3: keys under `detector.`
    state = rename(state) if rename is not None else state
    heads = {k: v for k, v in state.items() if k.startswith(head_prefixes(skeleton))}
    check_heads(skeleton, heads, f"'{checkpoint}'")
    return {k: v.detach().to("cpu", copy=True) for k, v in heads.items()}, digest


def official_checkpoint(model: nn.Module) -> dict:
    """The object to torch.save for `model` in its official format: its state dict (float
    CPU tensors, contiguous) plain or under its first `checkpoint_wrappers` key."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    wrappers = getattr(model, "checkpoint_wrappers", ())
    return {wrappers[0]: state} if wrappers else state


def save_official_checkpoint(model: nn.Module, target: str | os.PathLike | BinaryIO) -> None:
    """torch.save `official_checkpoint(model)` to a local path or a binary file object."""
    torch.save(official_checkpoint(model), target)


def check_loads(name: str, path: str | os.PathLike) -> nn.Module:
    """Build registry model `name` from the file at `path` strictly (`build_model`); a file that
    does not load raises CheckpointError naming it."""
    try:
        return build_model(name, checkpoint=path)
    except CheckpointError as e:
        raise CheckpointError(f"the file written for {name} does not load back: {e}") from e


def heads_model(name: str, heads: Mapping[str, torch.Tensor]) -> nn.Module:
    """Registry model `name` holding only `heads` (its prompt encoder and mask decoder, loaded
    bit for bit) for `decode` on saved embeddings; its image encoder is left out (an empty
    module: a ViT-H teacher costs 4M parameters here, not 641M). CPU, eval mode."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)}")
    with torch.device("meta"):
        model = MODEL_REGISTRY[name]()
    model.image_encoder = nn.Module()  # never run: decode() needs the heads only
    model.to_empty(device="cpu")
    for buffer in ("pixel_mean", "pixel_std"):  # non-persistent: not in `heads`, not needed
        if hasattr(model, buffer):
            getattr(model, buffer).zero_()
    model.model_name = name
    check_heads(model, heads, f"the heads of {name}")
    transplant_heads(model, heads, f"the heads of {name}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model
