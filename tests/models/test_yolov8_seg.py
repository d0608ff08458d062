"""FastSAM (YOLOv8-seg, one class): the official state dicts (manifests from
tests/golden/make_fastsam.py), the letterbox, numerical parity of the network and of the whole
everything mode with the official predictor (golden file from the same script), and the
`segment_everything` contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.yolov8_seg import (
    BN_EPS,
    BN_MOMENTUM,
    BUILDERS,
    MASK_LOGIT_BOUND,
    OFFICIAL_FILES,
    YoloV8Seg,
    letterbox,
    letterbox_geometry,
)
from operators.everything.one_pass import segment_everything
from tests.golden.make_fastsam import golden_image, golden_state_dict
from tests.models.common import assert_matches_manifest, meta_model
from tests.models.common import manifest as _manifest

DATA = Path(__file__).parent.parent / "data"
# Published sizes (FastSAM README: "68M" for FastSAM-x; YOLOv8x-seg is 71.8M with 80 classes).
# Ours equal the official SegmentationModel(yolov8{s,x}-seg.yaml, nc=1) exactly.
NUM_PARAMETERS = {"fastsam_s": 11_790_483, "fastsam_x": 71_751_811}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||"""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "golden_fastsam_s.npz") as f:
        return dict(f)


@pytest.fixture(scope="module")
def model(golden) -> YoloV8Seg:
    """FastSAM-s with the golden weights, in eval mode."""
    m = BUILDERS["fastsam_s"]()
    m.load_state_dict(golden_state_dict(m, golden["bn_mean"], golden["bn_var"]), strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def official_result(model, golden) -> dict[str, torch.Tensor]:
    """Our everything mode on the golden image at the golden settings."""
    return segment_everything(
        model, [golden_image()], detection_conf=float(golden["conf"]),
        detection_iou=float(golden["iou"]), detection_imgsz=int(golden["imgsz"]),
    )[0]


# -- architecture ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fastsam_s", "fastsam_x"])
def test_state_dict_equals_official_manifest(name):
    manifest = _manifest(name)
    model = meta_model(BUILDERS, name)
    state = model.state_dict()
    assert_matches_manifest(model, manifest)
    assert manifest["num_parameters"] == NUM_PARAMETERS[name]
    assert {k for k, _ in model.named_buffers()} - set(state) == set(
        manifest["non_persistent_buffers"]
    )
    assert OFFICIAL_FILES[name] == manifest["checkpoint"]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted({m.eps for m in bns}) == manifest["norm_eps_by_class"][
        "torch.nn.modules.batchnorm.BatchNorm2d"
    ] == [BN_EPS]
    assert sorted({m.momentum for m in bns}) == manifest["batch_norm_momentum"] == [BN_MOMENTUM]


def test_dfl_bins_initialised():
    """A fresh model projects the 16 bins with 0..15 like every official checkpoint."""
    model = BUILDERS["fastsam_s"]()
    weight = model.model[22].dfl.conv.weight
    assert torch.equal(weight.flatten(), torch.arange(16, dtype=torch.float32))
    assert not weight.requires_grad


def test_forward_shapes_and_input_check():
    model = BUILDERS["fastsam_s"]().eval()
    with torch.inference_mode():
        preds, protos = model(torch.rand(2, 3, 64, 96))
    anchors = 8 * 12 + 4 * 6 + 2 * 3  # strides 8, 16, 32
    assert preds.shape == (2, 4 + 1 + 32, anchors) and preds.dtype == torch.float32
    assert protos.shape == (2, 32, 16, 24)
    assert ((preds[:, 4] >= 0) & (preds[:, 4] <= 1)).all()  # sigmoid scores
    with pytest.raises(ValueError, match="expected Bx3xHxW with H and W multiples of 32"):
        model(torch.rand(1, 3, 64, 80))


# -- letterbox ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orig_hw", "imgsz", "resized_hw", "input_hw", "top", "left"),
    [
        ((200, 300), 320, (213, 320), (224, 320), 5, 0),  # odd padding: 5 above, 6 below
        ((300, 200), 320, (320, 213), (320, 224), 0, 5),
        ((1080, 1920), 1024, (576, 1024), (576, 1024), 0, 0),
        ((333, 500), 1024, (682, 1024), (704, 1024), 11, 0),
        ((500, 500), 1024, (1024, 1024), (1024, 1024), 0, 0),
        ((500, 500), 1000, (1024, 1024), (1024, 1024), 0, 0),  # imgsz rounded up to 32
        ((4000, 3000), 1024, (1024, 768), (1024, 768), 0, 0),
    ],
)
def test_letterbox_geometry(orig_hw, imgsz, resized_hw, input_hw, top, left):
    geom = letterbox_geometry(orig_hw, imgsz)
    assert (geom.resized_hw, geom.input_hw, geom.top, geom.left) == (
        resized_hw, input_hw, top, left
    )


def test_letterbox_equals_official_input(golden):
    """The official predictor's network input (uint8 levels, RGB) for the golden image, as its
    LetterBox makes it with OpenCV: byte-identical (tests/models/test_letterbox.py compares
    real photographs and odd sizes)."""
    image = golden_image()
    x = letterbox(torch.from_numpy(image).permute(2, 0, 1), letterbox_geometry(image.shape[:2],
                                                                              320))
    assert torch.equal(x, torch.from_numpy(golden["input_uint8"]).float())


def test_letterbox_pads_with_114_and_downscales():
    image = torch.full((3, 640, 480), 7, dtype=torch.uint8)
    geom = letterbox_geometry((640, 480), 320)  # 320x240, then 8 columns on each side
    assert geom.input_hw == (320, 256) and geom.left == 8
    x = letterbox(image, geom)
    assert (x[:, :, :8] == 114).all() and (x[:, :, -8:] == 114).all()
    assert (x[:, :, 8:-8] == 7).all()
    with pytest.raises(ValueError, match="expected uint8 3xHxW"):
        letterbox(image.float(), geom)


# -- parity with the official model ------------------------------------------------------------


def test_raw_outputs_match_official(model, golden):
    """Network outputs on the official input. The official predictor runs Conv+BN fused
    (relative differences ~1e-6 for boxes/scores, ~3e-5 for coefficients and prototypes)."""
    x = torch.from_numpy(golden["input_uint8"]).float()[None] / 255
    with torch.inference_mode():
        preds, protos = model(x)
    assert list(preds.shape) == golden["preds_shape"].tolist()
    assert list(protos.shape) == golden["protos_shape"].tolist()
    box_score = _rel(preds[0, :5], torch.from_numpy(golden["preds_box_score"]))
    coeffs = _rel(preds[0, 5:].flatten()[golden["coeff_index"]],
                  torch.from_numpy(golden["coeff_values"]))
    protos_err = _rel(protos[0].flatten()[golden["proto_index"]],
                      torch.from_numpy(golden["proto_values"]))
    print(f"rel err: boxes+scores {box_score:.2e}, coeffs {coeffs:.2e}, protos {protos_err:.2e}")
    assert box_score <= 5e-3 and coeffs <= 5e-3 and protos_err <= 5e-3


def test_everything_mode_matches_official(official_result, golden):
    """Boxes, scores and retina masks of the official FastSAMPredictor (conf 0.4, iou 0.9):
    45 small detections and one whole-image box (FastSAM's adjustment). Detections whose
    scores tie within the fused-vs-unfused noise may come in either order: each is compared
    with the reference detection of the nearest box."""
    boxes, scores = official_result["boxes"], official_result["scores"]
    ref_boxes, ref_scores = torch.from_numpy(golden["boxes"]), torch.from_numpy(golden["scores"])
    assert boxes.shape == ref_boxes.shape
    match = (boxes[:, None] - ref_boxes[None]).abs().amax(-1).argmin(1)  # ours -> reference
    assert sorted(match.tolist()) == list(range(len(ref_boxes)))
    assert (ref_scores[match] - ref_scores).abs().max() <= 1e-4  # only ties are reordered
    torch.testing.assert_close(boxes, ref_boxes[match], atol=0.05, rtol=0)
    torch.testing.assert_close(scores, ref_scores[match], atol=1e-4, rtol=0)
    n, h, w = golden["masks_shape"].tolist()
    ref_masks = np.unpackbits(golden["masks_packed"], axis=-1)[..., :w].astype(bool)
    ref_masks = ref_masks[match.numpy()]
    ours = (official_result["mask_logits"] > YoloV8Seg.mask_threshold).numpy()
    agreement = (ours == ref_masks).mean()
    print(f"mask pixels equal: {agreement:.7f} ({(ours != ref_masks).sum()} differ)")
    assert agreement >= 0.999
    whole = (boxes[:, :2] == 0).all(1) & (boxes[:, 2] > w - 1e-3) & (boxes[:, 3] > h - 1e-3)
    assert whole.sum() == 1


# -- the segment_everything contract -----------------------------------------------------------


def _check_result(result: dict[str, torch.Tensor], hw: tuple[int, int]) -> int:
    logits, boxes, scores = result["mask_logits"], result["boxes"], result["scores"]
    n = scores.shape[0]
    assert logits.shape == (n, *hw) and boxes.shape == (n, 4) and scores.shape == (n,)
    assert logits.dtype == boxes.dtype == scores.dtype == torch.float32
    assert (scores[:-1] >= scores[1:]).all()  # highest confidence first
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= hw[1]).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= hw[0]).all()
    assert (logits.abs() <= MASK_LOGIT_BOUND + 1e-4).all()
    return n


def test_mask_logits_are_box_cropped(official_result):
    """Outside its box a mask is at the floor logit; `> 0` never leaves the box."""
    logits, boxes = official_result["mask_logits"], official_result["boxes"]
    _check_result(official_result, (200, 300))
    for logit, box in zip(logits[:5], boxes[:5], strict=True):
        x1, y1, x2, y2 = box.tolist()
        cols, rows = torch.arange(300.0), torch.arange(200.0)
        inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None]
        assert (logit[~inside] == -MASK_LOGIT_BOUND).all()
        assert (logit > 0).any()


def test_segment_everything_mixed_sizes(model, official_result):
    """Three images in one call: two of one size (one batch) and a larger one (downscaled);
    each result equals the image run alone."""
    image = golden_image()
    big = golden_image(seed=3, shape=(400, 520, 3))
    results = segment_everything(model, [image, big, image[:, ::-1]], detection_imgsz=320)
    assert len(results) == 3
    assert _check_result(results[0], (200, 300)) == 46
    assert _check_result(results[1], (400, 520)) > 0
    assert _check_result(results[2], (200, 300)) > 0
    for key in ("boxes", "scores"):
        torch.testing.assert_close(results[0][key], official_result[key], atol=1e-3, rtol=0)
    alone = segment_everything(model, [big], detection_imgsz=320)[0]
    torch.testing.assert_close(results[1]["boxes"], alone["boxes"], atol=1e-3, rtol=0)
    assert ((results[0]["mask_logits"] > 0) == (official_result["mask_logits"] > 0)).float(
    ).mean() > 0.9999


def test_segment_everything_no_detections_and_errors(model):
    image = golden_image()
    result = segment_everything(model, [image], detection_conf=1.0, detection_imgsz=320)[0]
    assert _check_result(result, (200, 300)) == 0
    with pytest.raises(ValueError, match="expected uint8 HxWx3 RGB"):
        segment_everything(model, [image.astype(np.float32)], detection_imgsz=320)
    with pytest.raises(ValueError, match="expected uint8 HxWx3 RGB"):
        segment_everything(model, [image[..., 0]], detection_imgsz=320)
    with pytest.raises(ValueError, match="expected detection_conf in"):
        segment_everything(model, [image], detection_conf=1.5)
    with pytest.raises(ValueError, match="expected imgsz a positive int"):
        segment_everything(model, [image], detection_imgsz=0)
    assert model.mask_threshold == 0.0 and model.image_size == 1024
    assert model.device == torch.device("cpu")


# -- post-processing pieces --------------------------------------------------------------------
