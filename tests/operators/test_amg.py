"""Everything-mode steps on crafted inputs, and the generator against the official one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models import build_model
from operators.config import GeneratorConfig
from operators.everything.coco_rle import finish_annotations
from operators.everything.geometry import (
    crop_boxes,
    layer_point_grids,
    mask_to_rle,
    masks_to_boxes,
    near_crop_edge,
    stability_score,
    uncrop_masks,
)
from operators.everything.grid import MaskGenerator
from operators.everything.nms import nms
from tests.support import official, official_tiny_sam, smooth_image


def test_stability_score_on_crafted_logits():
    logits = torch.full((2, 4, 4), -5.0)
    logits[0, :2, :2] = 5.0  # 4 px far above both thresholds
    logits[0, 2, :2] = 0.5  # 2 px between -1 and +1
    logits[1] = 0.5  # only above the low threshold
    torch.testing.assert_close(stability_score(logits, 0.0, 1.0), torch.tensor([4 / 6, 0.0]))


def test_boxes_of_masks_inclusive_edges_and_empty():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 11] = True
    assert masks_to_boxes(masks).tolist() == [[3, 2, 8, 4], [11, 9, 11, 9], [0, 0, 0, 0]]
    sa = official()
    assert torch.equal(masks_to_boxes(masks), sa.utils.amg.batched_mask_to_box(masks))


def test_crop_edge_filter_keeps_image_edges():
    crop = [0, 0, 60, 50]  # a crop in the top-left of a 100x80 image
    # within 20 px of the crop's right edge (x=60) only the second box; all touch the image's
    # top-left corner, which is an image edge, not an inner crop edge
    boxes = torch.tensor([[10, 10, 25, 25], [10, 10, 55, 25], [0, 0, 25, 25]])
    assert near_crop_edge(boxes, crop, [0, 0, 100, 80]).tolist() == [False, True, False]
    shifted = [40, 30, 100, 80]  # bottom-right crop: its left/top edges are inner edges
    assert near_crop_edge(torch.tensor([[1, 25, 30, 40]]), shifted, [0, 0, 100, 80]).tolist() \
        == [True]


def test_nms_keeps_highest_and_separates_disjoint():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.5, 0.9, 0.3, 0.8])
    # IoU(1, 0) = 0.81, IoU(1, 3) = 72/99 = 0.73, IoU(3, 0) = 0.9; 2 is disjoint
    assert nms(boxes, scores, 0.7).tolist() == [1, 2]
    assert nms(boxes, scores, 0.85).tolist() == [1, 3, 2]  # 3 (0.8) suppresses 0 (0.5)
    assert nms(boxes, scores, 0.95).tolist() == [1, 3, 0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_uncrop_and_rle_round_trip():
    masks = torch.zeros(1, 4, 5, dtype=torch.bool)
    masks[0, 1:3, 2:4] = True
    full = uncrop_masks(masks, [10, 20, 15, 24], (30, 40))
    assert full.shape == (1, 30, 40) and full.sum() == 4 and full[0, 21:23, 12:14].all()
    rle = mask_to_rle(full[0].numpy())
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), full[0].numpy())


def test_grids_and_crop_boxes_equal_official():
    amg = official().utils.amg
    for ours, theirs in zip(layer_point_grids(32, 2, 2), amg.build_all_layer_point_grids(32, 2, 2),
                            strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for hw in [(1500, 2250), (480, 640), (77, 300)]:
        assert crop_boxes(hw, 2, 512 / 1500) == amg.generate_crop_boxes(hw, 2, 512 / 1500)


def _models():
    """The tiny SAM in both implementations with the same weights; the hypernetwork output is
    scaled so random weights give logits with structure (thresholds then mean something)."""
    sa = official()
    ours = build_model("sam_tiny", seed=11)
    sd = ours.state_dict()
    for k in sd:
        if k.startswith("mask_decoder.output_hypernetworks_mlps") and k.endswith("2.weight"):
            sd[k] = sd[k] * 40
    ours.load_state_dict(sd)
    theirs = official_tiny_sam(sa)
    theirs.load_state_dict(sd)
    return sa, ours, theirs


@pytest.mark.parametrize("layers,points", [(0, 8), (1, 4)])
def test_generator_masks_equal_the_official_generator(layers, points):
    sa, ours, theirs = _models()
    # box NMS off: random weights give near-identical masks that NMS would collapse to one
    settings = GeneratorConfig(points_per_side=points, points_per_batch=32, pred_iou_thresh=-1,
                               stability_score_thresh=0.6, crop_n_layers=layers, box_nms_thresh=1.0)
    images = [smooth_image(120, 170, seed=3), smooth_image(90, 64, seed=4)]
    got = MaskGenerator(ours, settings, batch_size=3).generate(images)
    for image, ours_anns in zip(images, got, strict=True):
        ref = sa.SamAutomaticMaskGenerator(theirs, output_mode="coco_rle",
                                           **settings.settings(one_pass=False)).generate(image)
        assert len(ours_anns) == len(ref) > 0
        same = 0
        for a, b in zip(ref, ours_anns, strict=True):
            same += a["segmentation"] == b["segmentation"]
            ma = mask_utils.decode({**a["segmentation"], "counts": a["segmentation"]["counts"]})
            mb = mask_utils.decode({**b["segmentation"], "counts": b["segmentation"]["counts"]})
            iou = (ma & mb).sum() / max((ma | mb).sum(), 1)
            assert iou >= 0.99
            assert a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"]
            assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4
            assert abs(a["stability_score"] - b["stability_score"]) < 1e-2
        assert same / len(ref) >= 0.97  # the rest differ by a pixel (logits at exactly 0)


def test_cleanup_and_batching_equal_the_official_generator():
    """Small-region cleanup (holes and islands under 40 px, then NMS preferring unchanged masks)
    gives the official generator's masks; so does decoding prompts of several crops and
    images in one call with upscaling in small chunks."""
    sa, ours, theirs = _models()
    settings = GeneratorConfig(points_per_side=6, points_per_batch=16, pred_iou_thresh=-1,
                               stability_score_thresh=0.5, crop_n_layers=1, box_nms_thresh=0.95,
                               crop_nms_thresh=0.95, min_mask_region_area=40,
                               decoder_batch_size=100, upscale_batch_size=7)
    images = [smooth_image(96, 128, seed=5), smooth_image(80, 80, seed=6)]
    generator = MaskGenerator(ours, settings, batch_size=4)
    got = generator.generate(images)
    changed = 0
    for image, ours_anns in zip(images, got, strict=True):
        ref = sa.SamAutomaticMaskGenerator(theirs, output_mode="coco_rle",
                                           **settings.settings(one_pass=False)).generate(image)
        assert len(ours_anns) == len(ref) > 0
        same = sum(a["segmentation"] == b["segmentation"] and a["bbox"] == b["bbox"]
                   for a, b in zip(ref, ours_anns, strict=True))
        assert same / len(ref) >= 0.97
        # the cleanup did something: some kept masks differ from their raw logits' masks
        raw_settings = {**settings.settings(one_pass=False), "min_mask_region_area": 0}
        raw = sa.SamAutomaticMaskGenerator(theirs, output_mode="coco_rle", **raw_settings
                                           ).generate(image)
        raw_rles = {r["segmentation"]["counts"] for r in raw}
        changed += sum(a["segmentation"]["counts"] not in raw_rles for a in ours_anns)
    assert changed > 0


def test_generator_refuses_bad_knobs():
    with pytest.raises(ValueError, match="decoder_batch_size"):
        MaskGenerator(build_model("sam_tiny"), GeneratorConfig(decoder_batch_size=0))
    with pytest.raises(ValueError, match="expected batch_size >= 1, got 0"):
        MaskGenerator(build_model("sam_tiny"), batch_size=0)
    with pytest.raises(ValueError, match="expected a promptable model"):
        MaskGenerator(build_model("fastsam_s"))


def test_stability_score_on_rows_wider_than_int16():
    """Row sums are int32: 35000 of 40000 pixels (int16 would wrap both counts)."""
    from operators.everything.geometry import stability_score

    logits = torch.full((1, 2, 40000), 0.5)
    logits[..., :35000] = 2.0
    assert stability_score(logits, 0.0, 1.0).item() == pytest.approx(35000 / 40000)


def test_padded_encoder_batches_give_the_same_masks():
    """With model.compile (a compiled encoder), a short crop batch is padded with zero
    images that are dropped after the encoder: the masks stay those of the unpadded run."""
    _, ours, _ = _models()
    settings = GeneratorConfig(points_per_side=4, points_per_batch=32, pred_iou_thresh=-1,
                               stability_score_thresh=0.6, crop_n_layers=1, box_nms_thresh=1.0)
    images = [smooth_image(120, 170, seed=3), smooth_image(90, 64, seed=4)]  # 10 crops: 4 + 4 + 2
    plain = MaskGenerator(ours, settings, batch_size=4).generate(images)
    padded = MaskGenerator(ours, settings, batch_size=4, compile=True).generate(images)
    for a_anns, b_anns in zip(plain, padded, strict=True):
        assert len(a_anns) == len(b_anns) > 0
        for a, b in zip(a_anns, b_anns, strict=True):
            ma, mb = mask_utils.decode(a["segmentation"]), mask_utils.decode(b["segmentation"])
            assert (ma & mb).sum() / max((ma | mb).sum(), 1) >= 0.99
            assert a["crop_box"] == b["crop_box"] and a["point_coords"] == b["point_coords"]
            assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4


@pytest.mark.parametrize("cleanup", [0, 40])
def test_unencoded_annotations_finish_to_the_encoded_ones(cleanup):
    """generate(encode=False) leaves each segmentation as int32 COCO counts ("runs", what the
    actor hands to the writer); finish_annotations turns them into exactly generate()'s
    annotations, whose areas and boxes are pycocotools' on the decoded masks."""
    _, ours, _ = _models()
    settings = GeneratorConfig(points_per_side=4, pred_iou_thresh=-1, stability_score_thresh=0.5,
                               crop_n_layers=1, box_nms_thresh=1.0, crop_nms_thresh=1.0,
                               min_mask_region_area=cleanup, upscale_batch_size=5)
    images = [smooth_image(96, 128, seed=5), smooth_image(57, 81, seed=6)]
    generator = MaskGenerator(ours, settings, batch_size=4)
    encoded = generator.generate(images)
    raw = generator.generate(images, encode=False)
    assert finish_annotations(raw) == encoded
    assert all(len(a) > 10 for a in encoded)
    for image, anns, raw_anns in zip(images, encoded, raw, strict=True):
        for ann, r in zip(anns, raw_anns, strict=True):
            seg = r["segmentation"]
            assert seg["size"] == list(image.shape[:2]) and seg["runs"].dtype == np.int32
            rle = {"size": ann["segmentation"]["size"],
                   "counts": ann["segmentation"]["counts"].encode()}
            x, y, w, h = ann["bbox"]
            assert ann["area"] == int(mask_utils.area(rle)) == int(seg["runs"][1::2].sum())
            assert [x, y, w + 1, h + 1] == mask_utils.toBbox(rle).tolist()
