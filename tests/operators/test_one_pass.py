"""The one-pass generator (FastSAM): annotations made a chunk of masks at a time equal those
made at once and the model's own full-size masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models import build_model
from operators.one_pass import OnePassGenerator, OnePassSettings
from tests.golden.make_fastsam import DATA, golden_image, golden_state_dict

SETTINGS = OnePassSettings(conf=0.4, iou=0.9, imgsz=320)


@pytest.fixture(scope="module")
def model():
    with np.load(DATA / "golden_fastsam_s.npz") as f:
        bn_mean, bn_var = f["bn_mean"], f["bn_var"]
    net = build_model("fastsam_s")
    net.load_state_dict(golden_state_dict(net, bn_mean, bn_var))
    return net.eval()


def test_chunked_masks_equal_the_whole(model):
    image = golden_image()
    det = model.detect_everything([image], conf=SETTINGS.conf, iou=SETTINGS.iou,
                                  imgsz=SETTINGS.imgsz)[0]
    assert len(det) > 10
    whole = det.mask_logits()
    chunks = torch.cat([det.mask_logits(s, s + 7) for s in range(0, len(det), 7)])
    # each mask on its own: the same up to the matmul's float rounding, the same masks
    torch.testing.assert_close(chunks, whole, rtol=0, atol=1e-4)
    assert torch.equal(chunks > 0, whole > 0)
    assert det.mask_logits(len(det), len(det) + 5).shape == (0, *image.shape[:2])
    full = model.segment_everything([image], conf=SETTINGS.conf, iou=SETTINGS.iou,
                                    imgsz=SETTINGS.imgsz)[0]
    assert torch.equal(full["mask_logits"], whole)


def test_generator_chunks_do_not_change_the_annotations(model):
    images = [golden_image(), golden_image(seed=1, shape=(150, 260, 3))]
    one = OnePassGenerator(model, SETTINGS, mask_batch_size=1).generate(images)
    many = OnePassGenerator(model, SETTINGS, mask_batch_size=64).generate(images)
    assert one == many and len(one[0]) > 10
    full = model.segment_everything(images[:1], conf=SETTINGS.conf, iou=SETTINGS.iou,
                                    imgsz=SETTINGS.imgsz)[0]
    kept = [k for k in range(len(full["scores"])) if (full["mask_logits"][k] > 0).any()]
    assert len(one[0]) == len(kept)
    for ann, k in zip(one[0], kept, strict=True):
        mask = mask_utils.decode({**ann["segmentation"],
                                  "counts": ann["segmentation"]["counts"].encode()})
        assert np.array_equal(mask.astype(bool), (full["mask_logits"][k] > 0).numpy())
        assert ann["predicted_iou"] == pytest.approx(float(full["scores"][k]))
        assert ann["point_coords"] == [] and ann["crop_box"] == [0, 0, 300, 200]


def test_generator_refuses_bad_arguments(model):
    with pytest.raises(ValueError, match="expected mask_batch_size >= 1, got 0"):
        OnePassGenerator(model, SETTINGS, mask_batch_size=0)
    with pytest.raises(ValueError, match="expected a one-pass model"):
        OnePassGenerator(build_model("sam_tiny"), SETTINGS)
