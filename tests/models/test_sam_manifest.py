"""The SAM teacher's state dict equals the official one: keys, shapes, dtypes, buffers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models import MODEL_REGISTRY

DATA = Path(__file__).parent.parent / "data"


def _manifest(name: str) -> dict:
    return json.loads((DATA / f"{name}.manifest.json").read_text())


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h"])
def test_state_dict_equals_official_manifest(name):
    manifest = _manifest(name)
    with torch.device("meta"):  # shapes only: ViT-H is 2.5 GB of fp32
        model = MODEL_REGISTRY[name]()
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in
            model.state_dict().items()}
    official = {k: (shape, dtype) for k, shape, dtype in manifest["keys"]}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    # pixel_mean/std are non-persistent, as in the official model
    buffers = {n for n, _ in model.named_buffers()}
    assert set(manifest["non_persistent_buffers"]) <= buffers
    assert not set(manifest["non_persistent_buffers"]) & set(ours)


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h"])
def test_norm_eps_equal_official(name):
    manifest = _manifest(name)
    with torch.device("meta"):
        model = MODEL_REGISTRY[name]()
    layer_norm = sorted({m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)})
    norm2d = sorted({m.eps for m in model.modules() if type(m).__name__ == "LayerNorm2d"})
    eps = manifest["norm_eps_by_class"]
    assert layer_norm == sorted(eps["torch.nn.modules.normalization.LayerNorm"])
    assert norm2d == sorted(eps["segment_anything.modeling.common.LayerNorm2d"])
    # the image encoder's norms are 1e-6, the decoder transformer's 1e-5
    assert {m.eps for m in model.image_encoder.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    assert {m.eps for m in model.mask_decoder.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}
