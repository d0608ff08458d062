"""Helpers of the model tests: the official manifests in tests/data, models built on the meta
device, and the two parity measures."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).parent.parent / "data"


def manifest(name: str) -> dict:
    """tests/data/{name}.manifest.json: the official state dict's keys, shapes, dtypes, ..."""
    return json.loads((DATA / f"{name}.manifest.json").read_text())


def meta_model(builders: Mapping[str, Callable[[], nn.Module]], name: str) -> nn.Module:
    """builders[name]() with shapes only: no memory, no initialisation."""
    with torch.device("meta"):
        return builders[name]()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened."""
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||"""
    return ((a - b).norm() / b.norm()).item()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float32 at least (the parity tests' measure)."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max()).item()


def seeded_std(p: torch.Tensor) -> float:
    """The std of seeded normal weights that keeps activations O(1): 1/sqrt(fan in) for
    matrices and kernels, 0.5 for vectors (biases, norm scales)."""
    return p[0].numel() ** -0.5 if p.ndim > 1 else 0.5


def assert_matches_manifest(model: nn.Module, manifest_: dict) -> None:
    """`model.state_dict()` has the manifest's keys, shapes and dtypes in its order, the same
    parameters and the same parameter count."""
    ours = [(k, list(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    official = [(k, shape, dtype) for k, shape, dtype, _ in manifest_["keys"]]
    assert sorted(set(k for k, *_ in official) - set(k for k, *_ in ours)) == []
    assert sorted(set(k for k, *_ in ours) - set(k for k, *_ in official)) == []
    assert ours == official  # same shapes, dtypes and even the same order
    params = {k for k, _, _, is_param in manifest_["keys"] if is_param}
    assert {k for k, _ in model.named_parameters()} == params
    assert sum(p.numel() for p in model.parameters()) == manifest_["num_parameters"]
