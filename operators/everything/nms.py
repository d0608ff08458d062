"""Greedy non-maximum suppression: the one NMS of samdata (torchvision is not a dependency).

Both everything modes use it: the point-grid generator within and across crops (as
segment-anything's `batched_nms` with one category) and FastSAM's detections (as Ultralytics'
class-agnostic `non_max_suppression`, at most `max_keep` kept).
"""

from __future__ import annotations

import numpy as np
import torch

MATRIX_NMS_MAX = 4096  # up to this many boxes, one NxN IoU matrix goes to the host


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Nx4 XYXY -> N areas (x1 - x0) * (y1 - y0)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def nms(boxes: torch.Tensor, scores: torch.Tensor | None, iou_threshold: float,
        max_keep: int | None = None, matrix_max: int = MATRIX_NMS_MAX) -> torch.Tensor:
    """Indices of the kept boxes, highest score first (int64 K, on the boxes' device).

    boxes float Nx4 XYXY; scores float N (ties keep the input order), or None when `boxes` are
    already sorted by score, highest first. A box is dropped when its IoU with a kept,
    higher-scored box is > `iou_threshold`; the sweep stops after `max_keep` kept boxes (None:
    no limit). IoU is torchvision's: intersection / (area_a + area_b - intersection).

    Up to `matrix_max` boxes the IoUs are one NxN matrix on the device and the greedy sweep
    runs on the host after a single copy; beyond, one kept box at a time on the device (each
    step waits for the device). Both give the same indices: the same float operations per
    pair, and a NaN IoU (0/0, two empty boxes) suppresses nothing in either, as in torchvision.
    """
    n = boxes.shape[0]
    if n == 0 or (max_keep is not None and max_keep <= 0):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    limit = n if max_keep is None else max_keep
    if scores is None:
        order = torch.arange(n, device=boxes.device)
        b = boxes.float()
    else:
        order = torch.argsort(scores, descending=True, stable=True)
        b = boxes[order].float()
    areas = box_area(b)
    if n <= matrix_max:
        lt = torch.maximum(b[:, None, :2], b[None, :, :2])
        rb = torch.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=2)
        over = (inter / (areas[:, None] + areas[None, :] - inter) > iou_threshold).cpu().numpy()
        alive = np.ones(n, dtype=bool)
        kept: list[int] = []
        for i in range(n):
            if alive[i]:
                kept.append(i)
                if len(kept) == limit:
                    break
                alive[i + 1 :] &= ~over[i, i + 1 :]
        return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]
    remaining = torch.arange(n, device=boxes.device)
    keep: list[torch.Tensor] = []
    while remaining.numel() > 0 and len(keep) < limit:
        best, rest = remaining[0], remaining[1:]
        keep.append(best)
        lt = torch.maximum(b[best, :2], b[rest, :2])
        rb = torch.minimum(b[best, 2:], b[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        iou = inter / (areas[best] + areas[rest] - inter)
        remaining = rest[~(iou > iou_threshold)]  # a NaN IoU (two empty boxes) suppresses not
    return order[torch.stack(keep)]
