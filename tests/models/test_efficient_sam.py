"""EfficientSAM (ViT-T, ViT-S): the official state dicts, `{"model": sd}` checkpoint loading,
the stretched float preprocessing, point/box prompts as the official decoder sees them,
numerical parity with the official model (golden file from tests/golden/make_efficient_sam.py)
and everything-mode generation.

Only ViT-T runs (its encoder at 1024 takes seconds on a CPU, so it runs twice in this module);
ViT-S is checked on the meta device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import Predictor, build_model
from models.checkpoint import load_state_dict_strict
from models.efficient_sam import BUILDERS, MAX_POINTS, OFFICIAL_FILES, EfficientSam
from operators.config import GeneratorConfig
from operators.everything.grid import MaskGenerator
from operators.shards.prepare import input_dtype
from tests.golden.make_efficient_sam import (
    PROMPTS,
    WEIGHT_SEED,
    golden_image,
    golden_state_dict,
)
from tests.models.common import assert_matches_manifest, meta_model
from tests.models.common import cosine as _cosine
from tests.models.common import manifest as _manifest
from tests.models.common import rel as _rel

DATA = Path(__file__).parent.parent / "data"
NAMES = sorted(BUILDERS)


@pytest.fixture(scope="module")
def model() -> EfficientSam:
    """ViT-T with the golden weights, in eval mode (made once for the module)."""
    net = BUILDERS["efficient_sam_vitt"]().eval()
    load_state_dict_strict(net, golden_state_dict(net, WEIGHT_SEED))
    return net.eval()


@pytest.fixture(scope="module")
def embedding(model) -> torch.Tensor:
    """The golden image's embedding, 1x256x64x64 (one encoder run for the module)."""
    return Predictor(model).embed([golden_image()])


# -- architecture ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_equals_official_manifest(name):
    manifest = _manifest(name)
    model = meta_model(BUILDERS, name)
    state = model.state_dict()
    assert_matches_manifest(model, manifest)
    non_persistent = {k for k, _ in model.named_buffers()} - set(state)
    assert non_persistent == set(manifest["non_persistent_buffers"])
    assert OFFICIAL_FILES[name] == manifest["checkpoint"]
    assert model.checkpoint_wrappers == (manifest["wrapping"],)


@pytest.mark.parametrize("name", NAMES)
def test_norm_eps_equal_official(name):
    eps = _manifest(name)["norm_eps_by_class"]
    model = meta_model(BUILDERS, name)

    def eps_of(kind: str) -> list[float]:
        return sorted({m.eps for m in model.modules() if type(m).__name__ == kind})

    assert eps_of("LayerNorm") == sorted(eps["torch.nn.modules.normalization.LayerNorm"])
    assert eps_of("LayerNorm2d") == eps["efficient_sam.efficient_sam_encoder.LayerNorm2d"]
    assert eps_of("GroupNorm") == eps["torch.nn.modules.normalization.GroupNorm"]
    # 1e-6 in the encoder, torch's default 1e-5 in the decoder
    assert {m.eps for m in model.mask_decoder.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}


@pytest.mark.parametrize("name", NAMES)
def test_frames(name):
    """A 1024 square for encoder and prompts, the whole square is image, float input."""
    model = meta_model(BUILDERS, name)
    assert model.image_size == model.prompt_size == 1024
    assert model.embedding_shape == (256, 64, 64)
    assert model.mask_threshold == 0.0
    assert model.input_hw((480, 640)) == (1024, 1024)
    assert input_dtype(model) == np.float32  # what the embed pipeline allocates


# -- pre- and post-processing ------------------------------------------------------------------


def test_prepare_image_stretches_in_float():
    """/255 in float32, then bilinear (no antialias) to 1024x1024 whatever the aspect; an
    image already 1024x1024 is only divided; `normalize` applies ImageNet mean/std."""
    model = meta_model(BUILDERS, "efficient_sam_vitt")
    image = golden_image(5, (30, 70, 3))
    prepared, input_hw = model.prepare_image(image)
    assert prepared.dtype == np.float32 and prepared.shape == (1024, 1024, 3)
    assert input_hw == (1024, 1024)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    expected = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False)
    assert torch.equal(torch.from_numpy(prepared).permute(2, 0, 1)[None], expected)

    square = golden_image(6, (1024, 1024, 3))
    assert np.array_equal(model.prepare_image(square)[0], square.astype(np.float32) / 255)

    cpu = BUILDERS["efficient_sam_vitt"]()  # normalize needs the real mean/std buffers
    batch = torch.from_numpy(prepared).permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(cpu.normalize(batch, [input_hw]), (batch - mean) / std)
    # uint8 input is taken as 0..255
    raw = torch.from_numpy(square).permute(2, 0, 1)[None]
    torch.testing.assert_close(cpu.normalize(raw), cpu.normalize(raw.float() / 255))


def test_prompt_frame_and_postprocessing():
    model = meta_model(BUILDERS, "efficient_sam_vitt")
    coords = torch.tensor([[320.0, 240.0], [0.0, 480.0], [-3.0, 100.0]])
    out = model.transform_coords(coords, (480, 640))
    assert out.dtype == torch.float64
    assert out.tolist() == [[512.0, 512.0], [0.0, 1024.0], [-1.0, 1024 * 100 / 480]]
    boxes = model.transform_boxes(torch.tensor([[64.0, 48.0, 640.0, 480.0]]), (480, 640))
    assert boxes.tolist() == [[102.4, 102.4, 1024.0, 1024.0]]
    low_res = torch.randn(2, 3, 256, 256)
    up = BUILDERS["efficient_sam_vitt"]().postprocess_masks(low_res, (100, 150))
    assert torch.equal(up, F.interpolate(low_res, (100, 150), mode="bicubic"))


# -- checkpoints -------------------------------------------------------------------------------


def test_official_format_file_loads_through_build_model(tmp_path):
    torch.manual_seed(1)
    state = BUILDERS["efficient_sam_vitt"]().state_dict()
    path = tmp_path / "efficient_sam_vitt.pt"
    torch.save({"model": state}, path)  # as the official files

    model = build_model("efficient_sam_vitt", checkpoint=path)
    assert isinstance(model, EfficientSam) and not model.training
    assert len(model.checkpoint_sha256) == 64
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


# -- parity with the official model (golden file) ----------------------------------------------


def test_matches_official_golden(model, embedding):
    _check_golden(model, embedding, "efficient_sam_vitt")


def test_vits_matches_official_golden():
    net = BUILDERS["efficient_sam_vits"]().eval()
    load_state_dict_strict(net, golden_state_dict(net, WEIGHT_SEED))
    net.eval()
    _check_golden(net, Predictor(net).embed([golden_image()]), "efficient_sam_vits")


def _check_golden(model: EfficientSam, embedding: torch.Tensor, name: str) -> None:
    """Our embedding / logits / IoU vs tests/data/golden_{name}.npz (the official model)."""
    golden = np.load(DATA / f"golden_{name}.npz")
    assert int(golden["weight_seed"]) == WEIGHT_SEED
    image = golden_image(int(golden["image_seed"]), tuple(golden["image_shape"]))
    hw = image.shape[:2]
    assert tuple(embedding.shape) == tuple(golden["embedding_shape"])
    picked = embedding.flatten()[torch.from_numpy(golden["embedding_index"])]
    assert _cosine(picked, torch.from_numpy(golden["embedding_values"])) >= 0.99999

    stride = int(golden["low_res_stride"])
    pixels = torch.from_numpy(golden["mask_pixel_index"])
    predictor = Predictor(model)
    assert sum(k.startswith("iou_") for k in golden.files) == len(PROMPTS)
    for i, (coords, labels, box, multimask) in enumerate(PROMPTS):
        assert bool(golden[f"multimask_{i}"]) == multimask
        out = predictor.predict(embedding[0], hw, point_coords=coords, point_labels=labels,
                                boxes=box, multimask=multimask)
        low_res = out["low_res_logits"][0, :, ::stride, ::stride]
        assert _rel(low_res, torch.from_numpy(golden[f"low_res_{i}"])) <= 5e-3, i
        masks = out["masks"][0].flatten(1)[:, pixels]
        assert out["masks"].shape[-2:] == hw
        assert _rel(masks, torch.from_numpy(golden[f"masks_{i}"])) <= 5e-3, i
        np.testing.assert_allclose(out["iou_predictions"][0].numpy(), golden[f"iou_{i}"],
                                   rtol=5e-3, atol=1e-4)


# -- prompts -----------------------------------------------------------------------------------


def test_decode_points_and_boxes(model, embedding):
    """Boxes are corner points labelled 2/3 put first; prompts are padded to 6 tokens with
    (-1, -1) / -1 or cut to the first 6; a shared embedding equals one per prompt."""
    with torch.inference_mode():
        coords = torch.tensor([[[512.0, 400.0], [100.0, 900.0]],
                               [[30.0, 40.0], [700.0, 700.0]]])
        labels = torch.tensor([[1, 0], [1, 1]])
        low_res, iou = model.decode(embedding, coords, labels)
        assert low_res.shape == (2, 3, 256, 256) and iou.shape == (2, 3)
        assert low_res.dtype == torch.float32
        # explicit padding is the implicit padding
        pad = torch.full((2, MAX_POINTS - 2, 2), -1.0)
        padded = model.decode(embedding, torch.cat([coords, pad], 1),
                              torch.cat([labels, torch.full((2, MAX_POINTS - 2), -1)], 1))
        torch.testing.assert_close(padded[0], low_res, rtol=0, atol=1e-5)
        # more than 6 points: the first 6 count
        many = torch.rand(2, MAX_POINTS + 2, 2) * 1024
        many_labels = torch.ones(2, MAX_POINTS + 2, dtype=torch.int)
        cut = model.decode(embedding, many[:, :MAX_POINTS], many_labels[:, :MAX_POINTS])
        torch.testing.assert_close(model.decode(embedding, many, many_labels)[0], cut[0])
        # one embedding per prompt gives what the shared one gives
        per_prompt = model.decode(embedding.expand(2, -1, -1, -1).contiguous(), coords, labels)
        torch.testing.assert_close(per_prompt[0], low_res, rtol=0, atol=1e-5)
        # a box, and a box with a point, are their corners (labels 2, 3) before the points
        boxes = torch.tensor([[100.0, 200.0, 600.0, 900.0], [10.0, 20.0, 300.0, 400.0]])
        corners = boxes.reshape(2, 2, 2)
        corner_labels = torch.tensor([[2, 3], [2, 3]])
        by_box = model.decode(embedding, boxes=boxes)
        torch.testing.assert_close(by_box[0], model.decode(embedding, corners, corner_labels)[0])
        mixed = model.decode(embedding, coords, labels, boxes=boxes)
        as_points = model.decode(embedding, torch.cat([corners, coords], 1),
                                 torch.cat([corner_labels, labels], 1))
        torch.testing.assert_close(mixed[0], as_points[0])
        # single-mask output: the official choice, mask token 0
        single, single_iou = model.decode(embedding, coords, labels, multimask_output=False)
        assert single.shape == (2, 1, 256, 256) and single_iou.shape == (2, 1)
        assert not torch.allclose(single[:, 0], low_res[:, 0])


def test_decode_rejects_unsupported_prompts(model, embedding):
    coords, labels = torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int)
    with pytest.raises(ValueError, match="no mask prompt"):
        model.decode(embedding, coords, labels, mask_input=torch.zeros(1, 1, 256, 256))
    with pytest.raises(ValueError, match="expected point_coords or boxes"):
        model.decode(embedding)
    with pytest.raises(ValueError, match="expected point_labels"):
        model.decode(embedding, coords)
    with pytest.raises(ValueError, match="as many boxes as point prompts"):
        model.decode(embedding, coords, labels, boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="expected Bx3x1024x1024"):
        model.image_encoder(torch.zeros(1, 3, 512, 512))


# -- everything mode ---------------------------------------------------------------------------


def test_mask_generator_runs(model):
    image = golden_image(3, (96, 128, 3))
    settings = GeneratorConfig(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0)
    (annotations,) = MaskGenerator(model, settings).generate([image])
    assert annotations
    for ann in annotations:
        assert list(ann["segmentation"]["size"]) == [96, 128]
        assert 0 <= ann["area"] <= 96 * 128
        x, y = ann["point_coords"][0]
        assert 0 <= x <= 128 and 0 <= y <= 96


def test_zero_prompts_and_autocast_prompt_encoding(model, embedding):
    """No prompts give empty outputs (not a reshape error); the Fourier point encoding stays
    float32 under bf16 autocast (in bf16 it moved point tokens by ~0.1)."""
    with torch.inference_mode():
        low_res, iou = model.decode(embedding, torch.zeros(0, 1, 2), torch.ones(0, 1))
        assert low_res.shape == (0, 3, 256, 256) and iou.shape == (0, 3)
        coords = torch.rand(4, 6, 2)
        pe = model.prompt_encoder.pe_layer
        plain = pe._encode(coords)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = pe._encode(coords)
        assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
