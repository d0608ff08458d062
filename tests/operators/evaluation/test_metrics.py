"""Mask IoU, size buckets and the mIoU accumulator on crafted masks and areas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import Params

from operators.evaluation.metrics import (
    MiouAccumulator,
    area_buckets,
    batched_mask_iou,
    is_evaluated,
    mask_iou,
)


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_iou_of_crafted_overlap():
    a = _rect(20, 20, 0, 10, 0, 10)  # 100 px
    b = _rect(20, 20, 0, 10, 5, 15)  # 100 px, 50 shared
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 0.0  # efficientvit's convention


def test_iou_rejects_non_bool_and_mismatched_masks():
    a = _rect(8, 8, 0, 4, 0, 4)
    with pytest.raises(ValueError, match="expected bool HxW mask a, got dtype uint8"):
        mask_iou(a.astype(np.uint8), a)
    with pytest.raises(ValueError, match=r"one shape, got \(8, 8\) and \(8, 9\)"):
        mask_iou(a, np.zeros((8, 9), dtype=bool))
    with pytest.raises(ValueError, match="two numpy arrays or two tensors"):
        mask_iou(a, torch.from_numpy(a))


def test_batched_iou_matches_pairs_numpy_and_torch():
    rng = np.random.default_rng(0)
    a = rng.random((5, 12, 9)) < 0.4
    b = rng.random((5, 12, 9)) < 0.4
    a[4] = False
    b[4] = False  # an empty pair -> 0
    expected = [mask_iou(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(batched_mask_iou(a, b), expected)
    got = batched_mask_iou(torch.from_numpy(a), torch.from_numpy(b))
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert got[4] == 0.0


def test_size_buckets_are_closed_like_cocoeval():
    assert area_buckets(0) == ("all", "small")
    assert area_buckets(1023) == ("all", "small")
    assert area_buckets(1024) == ("all", "small", "medium")
    assert area_buckets(1025) == ("all", "medium")
    assert area_buckets(9215) == ("all", "medium")
    assert area_buckets(9216) == ("all", "medium", "large")
    assert area_buckets(9217) == ("all", "large")
    # The same membership as COCOeval's own ranges (ignored when area < lo or area > hi)
    params = Params(iouType="segm")
    for area in (1, 500, 1023.5, 1024, 1024.5, 5000, 9216, 9216.5, 1e6):
        coco = tuple(label for label, (lo, hi) in zip(params.areaRngLbl, params.areaRng,
                                                      strict=True) if lo <= area <= hi)
        assert area_buckets(area) == coco, area
    with pytest.raises(ValueError, match="area >= 0, got -1"):
        area_buckets(-1)


def test_instances_below_one_pixel_are_not_evaluated():
    assert not is_evaluated(0) and not is_evaluated(0.5) and is_evaluated(1)


def test_accumulator_means_counts_and_empty_buckets():
    acc = MiouAccumulator()
    acc.extend([0.5, 1.0, 0.25, 0.75], [100, 1024, 5000, 9216])
    s = acc.summary()
    assert s["miou_all"] == pytest.approx(100 * 2.5 / 4)
    assert s["miou_small"] == pytest.approx(100 * 1.5 / 2)  # 100 and 1024
    assert s["miou_medium"] == pytest.approx(100 * 2.0 / 3)  # 1024, 5000 and 9216
    assert s["miou_large"] == pytest.approx(75.0)  # 9216
    assert (s["count_all"], s["count_small"], s["count_medium"], s["count_large"]) == (4, 2, 3, 1)

    only_large = MiouAccumulator()
    only_large.add(0.9, 20000)
    s = only_large.summary()
    assert s["miou_small"] is None and s["miou_medium"] is None and s["count_small"] == 0
    assert s["miou_large"] == pytest.approx(90.0)
    assert MiouAccumulator().summary()["miou_all"] is None


def test_accumulators_merge_to_the_same_summary():
    ious, areas = [0.1, 0.9, 0.4, 0.6, 0.3], [10, 2000, 50000, 1024, 300]
    whole = MiouAccumulator()
    whole.extend(ious, areas)
    left, right = MiouAccumulator(), MiouAccumulator()
    left.extend(ious[:2], areas[:2])
    right.extend(ious[2:], areas[2:])
    assert left.merge(right).summary() == pytest.approx(whole.summary())


def test_accumulator_rejects_bad_input():
    acc = MiouAccumulator()
    with pytest.raises(ValueError, match=r"IoU in \[0, 1\], got 80"):
        acc.add(80.0, 100)  # x100 by mistake
    with pytest.raises(ValueError, match="as many areas as IoUs, got 1 areas and 2 IoUs"):
        acc.extend([0.1, 0.2], [5])
