"""EfficientViT-SAM (L0/L1/L2/XL0/XL1): official state dicts, checkpoint loading, numerical
parity with the official model (golden files from tests/golden/make_efficientvit_sam.py) and
everything-mode generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import Predictor
from models.checkpoint import (
    CheckpointError,
    load_state_dict_strict,
    read_checkpoint,
    unwrap_state_dict,
)
from models.efficientvit import BUILDERS, OFFICIAL_FILES, LiteMLA
from operators.config import GeneratorConfig
from operators.everything.grid import MaskGenerator
from tests.golden.make_efficientvit_sam import golden_image, golden_state_dict
from tests.models.common import assert_matches_manifest, meta_model
from tests.models.common import cosine as _cosine
from tests.models.common import manifest as _manifest
from tests.models.common import rel as _rel

DATA = Path(__file__).parent.parent / "data"

# Published sizes (millions) and exact counts of the official model at commit de7d7733.
PARAMETERS = {
    "efficientvit_sam_l0": (34.8, 34_792_784),
    "efficientvit_sam_l1": (47.7, 47_650_128),
    "efficientvit_sam_l2": (61.3, 61_328_592),
    "efficientvit_sam_xl0": (117.0, 116_957_904),
    "efficientvit_sam_xl1": (203.3, 203_346_128),
}
MANIFESTS = ["efficientvit_sam_l0", "efficientvit_sam_xl0"]
SLOW = pytest.mark.slow


# -- architecture ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_state_dict_equals_official_manifest(name):
    manifest = _manifest(name)
    model = meta_model(BUILDERS, name)
    assert_matches_manifest(model, manifest)
    assert OFFICIAL_FILES[name] == manifest["checkpoint"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_norm_eps_equal_official(name):
    eps = _manifest(name)["norm_eps_by_class"]
    model = meta_model(BUILDERS, name)

    def eps_of(kind: str) -> list[float]:
        return sorted({m.eps for m in model.modules() if type(m).__name__ == kind})

    assert eps_of("BatchNorm2d") == eps["torch.nn.modules.batchnorm.BatchNorm2d"]
    assert eps_of("LayerNorm") == eps["torch.nn.modules.normalization.LayerNorm"]
    # ours has one LayerNorm2d class for the encoder's final norm and the SAM decoder's
    assert eps_of("LayerNorm2d") == sorted(
        set(eps["efficientvit.models.nn.norm.LayerNorm2d"])
        | set(eps["segment_anything.modeling.common.LayerNorm2d"])
    )
    assert eps_of("LiteMLA") == eps["efficientvit.models.nn.ops.LiteMLA"]
    # the SAM decoder's LayerNorms too are 1e-6 here (1e-5 in plain SAM)
    assert {m.eps for m in model.mask_decoder.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts_equal_published(name):
    published, exact = PARAMETERS[name]
    n = sum(p.numel() for p in meta_model(BUILDERS, name).parameters())
    assert round(n / 1e6, 1) == published
    assert n == exact


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_input_frames(name):
    """L runs the encoder at 512, XL at 1024; prompts always live in the 1024 frame."""
    model = meta_model(BUILDERS, name)
    assert model.image_size == (1024 if "_xl" in name else 512)
    assert model.prompt_size == 1024
    assert model.embedding_shape == (256, 64, 64)
    assert model.checkpoint_wrappers == ("state_dict",)


def test_lite_mla_equals_explicit_attention():
    """The linear (V K^T) Q form equals normalised ReLU attention written out per query."""
    torch.manual_seed(0)
    mla = LiteMLA(64, head_dim=16, scales=(3,)).eval()
    qkv = torch.randn(2, 2 * 3 * 64, 5, 7)  # 4 heads from the 1x1 conv, 4 from the scale
    out = mla._attend(qkv)
    t = qkv.reshape(2, 8, 48, 35)
    q, k, v = t[:, :, :16].relu(), t[:, :, 16:32].relu(), t[:, :, 32:]
    weights = k.transpose(-1, -2) @ q  # (B, heads, N keys, N queries)
    expected = v @ (weights / (weights.sum(2, keepdim=True) + mla.eps))
    torch.testing.assert_close(out, expected.reshape(2, -1, 5, 7), rtol=1e-5, atol=1e-5)


# -- checkpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [True, False])
def test_official_format_files_load_strictly(tmp_path, wrapped):
    torch.manual_seed(1)
    source = BUILDERS["efficientvit_sam_l0"]()
    state = source.state_dict()
    path = tmp_path / "efficientvit_sam_l0.pt"
    torch.save({"state_dict": state} if wrapped else state, path)

    torch.manual_seed(2)
    model = BUILDERS["efficientvit_sam_l0"]()
    loaded, _ = read_checkpoint(path)
    load_state_dict_strict(model, unwrap_state_dict(loaded, model.checkpoint_wrappers))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_foreign_checkpoint_is_rejected(tmp_path):
    model = meta_model(BUILDERS, "efficientvit_sam_l0")
    with pytest.raises(CheckpointError, match="state dict"):
        unwrap_state_dict({"model": {"a": torch.zeros(1)}, "epoch": 3}, model.checkpoint_wrappers)
    state = {k: v for k, v in BUILDERS["efficientvit_sam_l0"]().state_dict().items()
             if "neck.middle" not in k}
    with pytest.raises(CheckpointError, match="missing keys"):
        load_state_dict_strict(BUILDERS["efficientvit_sam_l0"](), state)


# -- parity with the official model (golden files) ---------------------------------------------


def _check_golden(name: str) -> None:
    golden = np.load(DATA / f"golden_{name}.npz")
    model = BUILDERS[name]().eval()
    load_state_dict_strict(model, golden_state_dict(model, int(golden["weight_seed"])))
    image = golden_image(int(golden["image_seed"]), tuple(golden["image_shape"]))
    hw = image.shape[:2]
    predictor = Predictor(model)
    embedding = predictor.embed([image])
    assert tuple(embedding.shape) == tuple(golden["embedding_shape"])
    picked = embedding.flatten()[torch.from_numpy(golden["embedding_index"])]
    assert _cosine(picked, torch.from_numpy(golden["embedding_values"])) >= 0.99999

    stride = int(golden["low_res_stride"])
    pixels = torch.from_numpy(golden["mask_pixel_index"])
    for i in range(sum(k.startswith("coords_") for k in golden.files)):
        out = predictor.predict(embedding[0], hw, point_coords=golden[f"coords_{i}"],
                                point_labels=golden[f"labels_{i}"], multimask=True)
        low_res = out["low_res_logits"][0, :, ::stride, ::stride]
        assert _rel(low_res, torch.from_numpy(golden[f"low_res_{i}"])) <= 5e-3
        masks = out["masks"][0].flatten(1)[:, pixels]
        assert out["masks"].shape[-2:] == hw
        assert _rel(masks, torch.from_numpy(golden[f"masks_{i}"])) <= 5e-3
        np.testing.assert_allclose(out["iou_predictions"][0].numpy(), golden[f"iou_{i}"],
                                   rtol=5e-3, atol=1e-4)


def test_l0_matches_official_golden():
    _check_golden("efficientvit_sam_l0")


@SLOW
def test_xl0_matches_official_golden():
    """XL at 1024: the neck also resizes a 128x128 stage down to 64x64."""
    _check_golden("efficientvit_sam_xl0")


# -- everything mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "efficientvit_sam_l0",
    pytest.param("efficientvit_sam_l1", marks=SLOW),  # 16 prompts through the SAM decoder:
    pytest.param("efficientvit_sam_l2", marks=SLOW),  # seconds per model on 2 shared cores
    pytest.param("efficientvit_sam_xl0", marks=SLOW),
    pytest.param("efficientvit_sam_xl1", marks=SLOW),
])
def test_mask_generator_runs(name):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    image = golden_image(3, (96, 128, 3))
    settings = GeneratorConfig(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    (annotations,) = MaskGenerator(model, settings).generate([image])
    assert annotations
    for ann in annotations:
        assert list(ann["segmentation"]["size"]) == [96, 128]
        assert 0 <= ann["area"] <= 96 * 128
