"""MobileSAM (TinyViT-5M encoder): the official state dict, checkpoint loading with TinyViT's
eval-mode bias cache, numerical parity with the official model (golden file from
tests/golden/make_mobile_sam.py) and everything-mode generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models import Predictor
from models.checkpoint import load_state_dict_strict, read_checkpoint, unwrap_state_dict
from models.sam import Sam
from models.tiny_vit import BUILDERS, OFFICIAL_FILES, WindowAttention, attention_bias_index
from operators.config import GeneratorConfig
from operators.everything.grid import MaskGenerator
from tests.golden.make_mobile_sam import WEIGHT_SEED, golden_image, golden_state_dict
from tests.models.common import assert_matches_manifest
from tests.models.common import cosine as _cosine
from tests.models.common import rel as _rel

DATA = Path(__file__).parent.parent / "data"


def _manifest() -> dict:
    return json.loads((DATA / "mobile_sam.manifest.json").read_text())


def _meta() -> nn.Module:
    with torch.device("meta"):  # shapes only, no memory, no initialisation
        return BUILDERS["mobile_sam"]()


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The golden weights (seeded, 10M values: made once for the module)."""
    return golden_state_dict(_meta())


def _attentions(model: nn.Module) -> list[WindowAttention]:
    return [m for m in model.modules() if isinstance(m, WindowAttention)]


# -- architecture ------------------------------------------------------------------------------


def test_state_dict_equals_official_manifest():
    manifest = _manifest()
    model = _meta()
    state = model.state_dict()
    assert_matches_manifest(model, manifest)
    # pixel_mean/std, the bias index and the eval cache `ab` are buffers left out of the file
    non_persistent = {k for k, _ in model.named_buffers()} - set(state)
    assert non_persistent == set(manifest["non_persistent_buffers"])
    assert OFFICIAL_FILES["mobile_sam"] == manifest["checkpoint"]


def test_norm_eps_equal_official():
    eps = _manifest()["norm_eps_by_class"]
    model = _meta()

    def eps_of(kind: str) -> list[float]:
        return sorted({m.eps for m in model.modules() if type(m).__name__ == kind})

    assert eps_of("BatchNorm2d") == eps["torch.nn.modules.batchnorm.BatchNorm2d"]
    assert eps_of("LayerNorm") == eps["torch.nn.modules.normalization.LayerNorm"]
    # ours has one LayerNorm2d class for the encoder's neck and the SAM decoder's
    assert eps_of("LayerNorm2d") == sorted(
        set(eps["mobile_sam.modeling.tiny_vit_sam.LayerNorm2d"])
        | set(eps["mobile_sam.modeling.common.LayerNorm2d"])
    )


def test_sam_frames():
    """The same image pipeline as SAM: 1024 input and prompt frame, 256x64x64 embedding."""
    model = _meta()
    assert isinstance(model, Sam)
    assert model.image_size == model.prompt_size == 1024
    assert model.embedding_shape == (256, 64, 64)
    assert getattr(model, "checkpoint_wrappers", ()) == ()  # mobile_sam.pt is a plain dict


def test_attention_bias_index():
    """Entry [i, j] numbers the offset (|dy|, |dx|) between window tokens i and j."""
    idx = attention_bias_index(3)
    assert idx.shape == (9, 9)
    assert torch.equal(idx, idx.T) and (idx.diagonal() == 0).all()
    assert idx[0].tolist() == list(range(9))  # token 0 meets every offset in raster order
    assert idx[4, 0] == idx[4, 8] == 1 * 3 + 1  # the centre is one row and column from corners
    assert idx[2, 6] == 2 * 3 + 2


# -- checkpoints and the eval-mode bias cache --------------------------------------------------


def test_official_format_file_loads_after_eval(tmp_path, weights):
    """A plain state dict saved as the official file loads strictly into a model already in
    eval mode (as `build_model` and the official builder do) and gives the outputs of a model
    given the same weights in train mode and switched to eval afterwards."""
    reference = BUILDERS["mobile_sam"]()
    load_state_dict_strict(reference, weights)
    reference.eval()
    path = tmp_path / "mobile_sam.pt"
    torch.save(weights, path)

    loaded, digest = read_checkpoint(path)
    model = BUILDERS["mobile_sam"]().eval()  # eval before the load, as build_model
    load_state_dict_strict(model, unwrap_state_dict(loaded, ()))
    model.eval()
    assert len(digest) == 64

    torch.manual_seed(0)
    x = torch.randn(1, 3, 256, 256)  # 64 -> 32 -> 16 tokens: every window size needs padding
    embedding = torch.randn(1, 256, 64, 64)
    coords, labels = torch.tensor([[[500.0, 375.0]]]), torch.tensor([[1]])
    with torch.inference_mode():
        assert torch.equal(model.image_encoder(x), reference.image_encoder(x))
        for ours, ref in zip(model.decode(embedding, coords, labels),
                             reference.decode(embedding, coords, labels), strict=True):
            assert torch.equal(ours, ref)


def test_bias_cache_follows_the_weights(weights):
    """`ab` is refreshed by eval() and by load_state_dict even without a later eval()."""
    model = BUILDERS["mobile_sam"]().eval()
    attentions = _attentions(model)
    assert len(attentions) == 10
    assert all(not a.ab.any() for a in attentions)  # zero-initialised biases
    model.load_state_dict(weights)  # no eval() afterwards
    for attn in attentions:
        assert attn.ab.any()
        assert torch.equal(attn.ab, attn.attention_biases[:, attn.attention_bias_idxs])
    with torch.no_grad():
        attentions[0].attention_biases.add_(1.0)  # an in-place edit needs a train()/eval()
    model.train().eval()
    a = attentions[0]
    assert torch.equal(a.ab, a.attention_biases[:, a.attention_bias_idxs])


# -- parity with the official model (golden file) ----------------------------------------------


def test_matches_official_golden(weights):
    """Golden weights scale the attention biases up, so that a stale bias cache, misnumbered
    offsets or padding after the attention's norm each fail every threshold here ~10x over."""
    golden = np.load(DATA / "golden_mobile_sam.npz")
    assert int(golden["weight_seed"]) == WEIGHT_SEED
    model = BUILDERS["mobile_sam"]().eval()  # as build_model: eval, load, eval
    load_state_dict_strict(model, weights)
    model.eval()
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


# -- everything mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILDERS))
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
