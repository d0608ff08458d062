"""Mask IoU and the mIoU of the prompted protocols (box prompts, point clicks, teacher-student
agreement), split by ground-truth area as the SAM family reports it.

Conventions, with where they come from:
- IoU = |A & B| / |A | B|; two empty masks give 0.0, as in efficientvit's
  `applications/efficientvit_sam/sam_eval_utils.py::iou` (it divides by union + 1e-7; we divide
  exactly, which differs from it by less than 1e-7 relative).
- Ground-truth instances with `area` < 1 are not evaluated (`run_box` / `run_point` in
  efficientvit's `eval_efficientvit_sam_model.py` skip them); see `is_evaluated`.
- Size buckets use the ground-truth `area` field (not the decoded mask's pixel count) and are
  closed at both ends: small = [0, 32**2], medium = [32**2, 96**2], large = [96**2, inf).
  efficientvit's `filter_results_by_area` drops r["area"] < min and r["area"] > max, and
  pycocotools' COCOeval marks a ground truth ignored when area < areaRng[0] or
  area > areaRng[1] with areaRng small [0, 32**2], medium [32**2, 96**2], large [96**2, 1e10].
  So an instance of area exactly 1024 counts in small and in medium, one of area 9216 in medium
  and in large (the bucket counts may add up to more than the total).
- mIoU is the mean of the per-instance IoUs, x100.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch

SMALL_MAX_AREA = 32**2  # small: area <= 1024 (closed)
LARGE_MIN_AREA = 96**2  # large: area >= 9216 (closed); medium: 1024 <= area <= 9216
MIN_GT_AREA = 1  # instances with a smaller ground-truth area are skipped
BUCKETS = ("all", "small", "medium", "large")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _check_bool_pair(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
                     ndim: int, shape_name: str) -> None:
    """Raise ValueError unless a and b are bool arrays of one shape with `ndim` dimensions."""
    for name, m in (("a", a), ("b", b)):
        if not isinstance(m, (np.ndarray, torch.Tensor)):
            raise ValueError(f"expected a numpy array or tensor as mask {name}, got "
                             f"{type(m).__name__}")
        if m.dtype != (torch.bool if isinstance(m, torch.Tensor) else np.bool_):
            raise ValueError(f"expected bool {shape_name} mask {name}, got dtype {m.dtype}")
        if m.ndim != ndim:
            raise ValueError(f"expected bool {shape_name} mask {name}, got shape "
                             f"{tuple(m.shape)}")
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"expected masks of one shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def mask_iou(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """IoU in [0, 1] of two bool HxW masks (numpy or torch); 0.0 when both are empty."""
    _check_bool_pair(a, b, 2, "HxW")
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        raise ValueError(f"expected two numpy arrays or two tensors, got {type(a).__name__} "
                         f"and {type(b).__name__}")
    inter = int((a & b).sum())
    union = int((a | b).sum())
    return inter / union if union else 0.0


def batched_mask_iou(a: ArrayT, b: ArrayT) -> ArrayT:
    """IoU of index-aligned pairs: bool NxHxW and bool NxHxW -> N IoUs in [0, 1] (float64 numpy
    for numpy input, float32 tensor on the input's device for torch input); 0 for pairs where
    both masks are empty."""
    _check_bool_pair(a, b, 3, "NxHxW")
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        inter = (a & b).flatten(1).sum(1, dtype=torch.int64)  # (N,)
        union = (a | b).flatten(1).sum(1, dtype=torch.int64)  # (N,)
        return torch.where(union > 0, inter / union.clamp(min=1), 0.0).float()
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        inter = (a & b).reshape(len(a), -1).sum(1)  # (N,)
        union = (a | b).reshape(len(a), -1).sum(1)  # (N,)
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    raise ValueError(f"expected two numpy arrays or two tensors, got {type(a).__name__} and "
                     f"{type(b).__name__}")


def is_evaluated(gt_area: float) -> bool:
    """Whether the protocols evaluate a ground-truth instance of this `area` (area >= 1)."""
    return gt_area >= MIN_GT_AREA


def area_buckets(gt_area: float) -> tuple[str, ...]:
    """The buckets an instance of ground-truth `area` counts in, "all" first; boundary areas
    (1024, 9216) are in two size buckets (see the module docstring)."""
    if gt_area < 0:
        raise ValueError(f"expected a ground-truth area >= 0, got {gt_area}")
    buckets = ["all"]
    if gt_area <= SMALL_MAX_AREA:
        buckets.append("small")
    if SMALL_MAX_AREA <= gt_area <= LARGE_MIN_AREA:
        buckets.append("medium")
    if gt_area >= LARGE_MIN_AREA:
        buckets.append("large")
    return tuple(buckets)


class MiouAccumulator:
    """Running mIoU per size bucket. Sums and counts only, so accumulators of different workers
    merge exactly (`merge`)."""

    def __init__(self) -> None:
        self._sum = dict.fromkeys(BUCKETS, 0.0)
        self._count = dict.fromkeys(BUCKETS, 0)

    def add(self, iou: float, gt_area: float) -> None:
        """One instance: its IoU in [0, 1] and its ground-truth `area` field."""
        iou = float(iou)
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"expected an IoU in [0, 1], got {iou}")
        for bucket in area_buckets(gt_area):
            self._sum[bucket] += iou
            self._count[bucket] += 1

    def extend(self, ious: Iterable[float], gt_areas: Iterable[float]) -> None:
        """Many instances: IoUs and ground-truth areas, index-aligned."""
        ious, gt_areas = list(ious), list(gt_areas)
        if len(ious) != len(gt_areas):
            raise ValueError(f"expected as many areas as IoUs, got {len(gt_areas)} areas and "
                             f"{len(ious)} IoUs")
        for iou, area in zip(ious, gt_areas, strict=True):
            self.add(iou, area)

    def merge(self, other: MiouAccumulator) -> MiouAccumulator:
        """Add `other`'s instances into this accumulator; returns self."""
        for bucket in BUCKETS:
            self._sum[bucket] += other._sum[bucket]
            self._count[bucket] += other._count[bucket]
        return self

    def summary(self) -> dict[str, float | int | None]:
        """{"miou_all", "miou_small", "miou_medium", "miou_large"}: mean IoU x100, None for a
        bucket without instances; {"count_all", "count_small", "count_medium", "count_large"}:
        instances per bucket (a boundary area counts in two size buckets)."""
        out: dict[str, float | int | None] = {}
        for bucket in BUCKETS:
            n = self._count[bucket]
            out[f"miou_{bucket}"] = 100.0 * self._sum[bucket] / n if n else None
        for bucket in BUCKETS:
            out[f"count_{bucket}"] = self._count[bucket]
        return out
