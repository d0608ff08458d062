"""Everything-mode geometry as pure torch functions: point grids, crop boxes, stability score,
mask boxes, crop-edge filter, uncropping and COCO RLE (NMS: nms.py). Semantics equal
segment-anything's automatic mask generator utilities."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch
from pycocotools import mask as mask_utils


def point_grid(n_per_side: int) -> np.ndarray:
    """float64 (n*n)x2 (x, y) cell centres of an n x n grid over [0, 1]^2, rows of constant y."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(n_per_side: int, n_layers: int, downscale: int) -> list[np.ndarray]:
    """One grid per crop layer, layer i with int(n_per_side / downscale**i) points a side."""
    return [point_grid(int(n_per_side / downscale**i)) for i in range(n_layers + 1)]


def crop_boxes(im_hw: tuple[int, int], n_layers: int, overlap_ratio: float
               ) -> tuple[list[list[int]], list[int]]:
    """XYXY int crop boxes and their layer index: the whole image, then (2**i)**2 overlapping
    crops for layer i = 1..n_layers."""
    im_h, im_w = im_hw
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """bool ...xHxW -> int ... set pixels per HxW mask (int64 on the CPU, int32 elsewhere).
    On the CPU numpy's count_nonzero does it: torch's bool sums are ~8x slower there (2.13,
    1 thread, 1500x2250 masks)."""
    if masks.device.type == "cpu":
        flat = masks.numpy().reshape(*masks.shape[:-2], -1)
        return torch.from_numpy(np.asarray(np.count_nonzero(flat, axis=-1), dtype=np.int64))
    # int32 row sums first: int16 (the official's) overflows on rows wider than 32767 px
    return masks.sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)


def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """...xHxW logits -> ... float32: |logits > t+o| / |logits > t-o| (IoU of two thresholds).
    Exact integer counts on every device (float32 division of equal counts: equal scores)."""
    inter = count_true(logits > threshold + offset)
    union = count_true(logits > threshold - offset)
    return inter / union


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """bool NxHxW -> int64 Nx4 XYXY with inclusive max edges; [0, 0, 0, 0] for empty masks."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.long, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    bottom = (rows * ar_h).amax(dim=1)
    top = torch.where(rows, ar_h, h).amin(dim=1)
    right = (cols * ar_w).amax(dim=1)
    left = torch.where(cols, ar_w, w).amin(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    empty = ~rows.any(dim=1)
    return boxes.masked_fill(empty[:, None], 0)


def near_crop_edge(boxes: torch.Tensor, crop_box: list[int], orig_box: list[int],
                   atol: float = 20.0) -> torch.Tensor:
    """bool N: boxes (XYXY, crop frame) within `atol` of a crop edge that is not an image edge.
    Python scalars only: a small tensor made from a list would be a copy that waits for the
    device."""
    b = boxes.float()
    x0, y0 = crop_box[0], crop_box[1]
    near = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    for col, shift, crop_edge, image_edge in zip(range(4), (x0, y0, x0, y0), crop_box, orig_box,
                                                 strict=True):
        v = b[:, col] + shift  # image frame
        near |= ((v - crop_edge).abs() <= atol) & ~((v - image_edge).abs() <= atol)
    return near


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_hw: tuple[int, int]
                 ) -> torch.Tensor:
    """NxhxW masks of a crop -> NxHxW masks of the image (zeros outside the crop)."""
    x0, y0, x1, y1 = crop_box
    h, w = orig_hw
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return masks
    pad = (x0, w - x1, y0, h - y1)
    return torch.nn.functional.pad(masks, pad, value=0)


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool HxW -> COCO compressed RLE {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
