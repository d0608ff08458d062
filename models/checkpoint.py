"""Loading official checkpoint files unchanged: local path or any fsspec URL, optional sha256,
`weights_only=True`, strict key/shape match with a readable error."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import torch
from torch import nn

_CHUNK = 8 << 20  # 8 MiB reads: fast on local disks and object stores alike


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the model it was given to."""


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def _load_weights_only(target: str | BinaryIO) -> Any:
    return torch.load(target, map_location="cpu", weights_only=True)


def read_checkpoint(
    source: str | os.PathLike,
    sha256: str | None = None,
    loader: Callable[[str | BinaryIO], Any] | None = None,
    storage_options: dict | None = None,
) -> tuple[Any, str]:
    """torch.load a checkpoint from a local path or fsspec URL (s3://, gs://, https://, ...),
    on CPU with `weights_only=True`; if `sha256` is given the file's digest must equal it.
    `loader(path or binary file)` replaces that torch.load for files of another format (e.g.
    `ultralytics_checkpoint.load_ultralytics_state_dict`, itself restricted).
    storage_options: fsspec options of a URL (e.g. {"client_kwargs": {"endpoint_url": ...}}
    for an S3 endpoint of the job's storage section).

    Returns the loaded object and the file's hex sha256."""
    source = os.fspath(source)
    digest = hashlib.sha256()
    try:
        if _is_url(source):
            import fsspec  # only for remote files; models/ stays free of I/O otherwise

            with fsspec.open(source, "rb", **(storage_options or {})) as f:
                buf = io.BytesIO()
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    buf.write(chunk)
            buf.seek(0)
            target: Any = buf
        else:
            path = source.removeprefix("file://")
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            target = path
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint not found at '{source}'") from e
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint at '{source}': {e}") from e
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise CheckpointError(
            f"checkpoint sha256 mismatch for '{source}': expected {sha256.lower()}, "
            f"got {digest.hexdigest()}"
        )
    try:
        return (loader or _load_weights_only)(target), digest.hexdigest()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"cannot load '{source}' as a weights-only torch checkpoint: {_why(e)}"
        ) from e


def _why(e: BaseException) -> str:
    """The reason torch's safe loader gives, in one line and without its advice to retry with
    weights_only=False (which would run whatever code the file holds)."""
    import re

    sentences = re.split(r"(?<=[.!?])\s+|\n+", str(e))
    kept = [t.strip() for t in sentences if t.strip() and not re.search(
        r"weights_only|Weights only load failed|trusted source|documentation|arbitrary code|"
        r"To execute this test|safe_globals|add_safe_globals", t)]
    reason = " ".join(kept)[:200] or "not a file of plain tensors"
    return f"{type(e).__name__}: {reason}"


def unwrap_state_dict(obj: Any, wrappers: tuple[str, ...] = ()) -> Mapping[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: `obj` itself, or `obj[w]` for the first
    wrapper key `w` present (e.g. "model" for EfficientSAM, "state_dict" for EfficientViT)."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if key in obj and isinstance(obj[key], Mapping):
                return obj[key]
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    kind = type(obj).__name__
    keys = list(obj)[:5] if isinstance(obj, Mapping) else []
    raise CheckpointError(
        f"expected a state dict of tensors"
        f"{' or a dict holding one under ' + repr(wrappers) if wrappers else ''}, "
        f"got {kind} with keys {keys}"
    )


def _sample(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def drop_ignored_keys(state_dict: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]
                      ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the state dict without the keys starting with one of `prefixes`, those keys sorted).
    For files that hold more than the model uses, the parts declared by the model (SAM 2's
    video modules: models/sam2 `VIDEO_ONLY_PREFIXES`)."""
    kept = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    return kept, sorted(set(state_dict) - set(kept))


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                           ignored_prefixes: tuple[str, ...] = ()) -> None:
    """Load with `strict=True`, raising a `CheckpointError` that lists the missing and
    unexpected keys and any shape mismatch before torch is asked.

    ignored_prefixes: keys of the file starting with one of these are skipped (a model's
    declared extra parts, e.g. SAM 2's video modules); every other key must match."""
    expected = model.state_dict()
    clash = sorted(k for k in expected if ignored_prefixes and k.startswith(ignored_prefixes))
    if clash:
        raise CheckpointError(f"expected the ignored prefixes {ignored_prefixes} to match no key "
                              f"of {type(model).__name__}, got {_sample(clash)}")
    state_dict, _ = drop_ignored_keys(state_dict, ignored_prefixes)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state_dict[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"checkpoint does not match {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_sample(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_sample(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_sample(shapes)}")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def seeded_state_dict(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the model's exact keys, shapes and dtypes, the same for a seed.

    Unlike a fresh `__init__` (which leaves SAM's position tables at zero) every tensor is
    non-trivial: weights ~ N(0, 1/fan_in), norm weights ~ 1 + N(0, 0.1), biases ~ N(0, 0.1),
    position tables ~ N(0, 0.02) (the Fourier matrix ~ N(0, 1), as its initialiser), batch-norm
    running variances ~ 1 + |N(0, 0.1)| (positive, else every output is NaN), counters 0."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in model.state_dict().items():
        shape = tuple(ref.shape)
        if ref.is_complex():  # a computed table (SAM 3's RoPE frequencies): kept as built
            out[name] = ref.detach().clone()
            continue
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("positional_encoding_gaussian_matrix"):
            value = noise
        elif leaf == "running_var":
            value = 1.0 + 0.1 * noise.abs()
        elif leaf == "num_batches_tracked":
            value = torch.zeros(shape, dtype=torch.float64)
        elif "pos" in leaf:
            value = noise * 0.02
        elif len(shape) >= 2:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            value = noise / fan_in**0.5
        elif leaf == "weight":
            value = 1.0 + 0.1 * noise
        else:
            value = 0.1 * noise
        out[name] = value.to(ref.dtype)
    return out
