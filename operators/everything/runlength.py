"""COCO run-length encoding in two halves: this batched torch part runs where the masks are
(the GPU) and sends back only change points, areas and boxes (`masks_to_runs`); the numpy part
in `coco_rle.py` (no torch) turns those into SA-1B fields (compressed RLE strings) on a CPU
worker.

The run lengths ("counts") are those of the mask flattened in column-major order, alternating
runs of 0s and 1s and starting with a run of 0s (of length 0 when the first pixel is 1); the
last run ends at the last pixel. A mask's change points are the flat indices p in [0, H*W)
where pixel p differs from pixel p-1 (pixel -1 counting as 0); the counts are the gaps between
0, the change points and H*W. Masks of a crop are placed in the image implicitly: a crop pixel
(r, c) of a crop at (x0, y0) has the flat index (c + x0) * H + (r + y0) in the image, and
everything outside the crop is 0.
"""

from __future__ import annotations

import numpy as np
import torch

from .coco_rle import MaskRuns, runs_to_annotations

# Masks are processed in chunks of at most this many crop pixels: the change map of a chunk
# takes one byte a pixel on the device (64 MiB here), next to the masks themselves. Each chunk
# costs one device sync (the size of its change-point list).
CHUNK_PIXELS = 1 << 26


def _check_crop(masks: torch.Tensor, crop_box: list[int] | None, orig_hw: tuple[int, int] | None
                ) -> tuple[list[int], tuple[int, int]]:
    """(crop_box, orig_hw) with the defaults filled in (the masks cover the whole image)."""
    if masks.dim() != 3 or masks.dtype != torch.bool:
        raise ValueError(f"expected masks bool NxHxW, got {masks.dtype} {tuple(masks.shape)}")
    n, h, w = masks.shape
    if orig_hw is None:
        orig_hw = (h, w)
    big_h, big_w = (int(v) for v in orig_hw)
    if crop_box is None:
        crop_box = [0, 0, big_w, big_h]
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if (y1 - y0, x1 - x0) != (h, w):
        raise ValueError(f"expected masks of the crop box's size {(y1 - y0, x1 - x0)} (crop box "
                         f"{[x0, y0, x1, y1]}), got {(h, w)}")
    if not (0 <= x0 < x1 <= big_w and 0 <= y0 < y1 <= big_h):
        raise ValueError(f"expected a non-empty crop box inside the image {(big_h, big_w)}, "
                         f"got {[x0, y0, x1, y1]}")
    return [x0, y0, x1, y1], (big_h, big_w)


def _flat_nonzero(change: torch.Tensor) -> torch.Tensor:
    """int64 K flat indices of the set entries of a contiguous bool tensor. One sync. On the
    CPU numpy's is used: torch's is several times slower there (2.13, 2 cores)."""
    if change.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(change.numpy()))
    return change.view(-1).nonzero()[:, 0]


def _change_points(masks: torch.Tensor, crop_box: list[int], orig_hw: tuple[int, int],
                   buffer: torch.Tensor) -> torch.Tensor:
    """bool nxhxw crop masks -> int64 K keys mask * H*W + p of their change points p in the
    image, ascending (so grouped by mask). `buffer`: bool of at least n*(h+1)*w, overwritten."""
    n, h, w = masks.shape
    x0, y0, x1, y1 = crop_box
    big_h, big_w = orig_hw
    # Change map, (n, h+1, w) in the masks' own layout: entry (r, c) says whether crop pixel
    # (r, c) differs from the pixel before it in the image's column-major order (r = h: the
    # pixel just below the crop's column, 0 or, at y1 = H, the next column's top).
    change = buffer[: n * (h + 1) * w].view(n, h + 1, w)
    torch.ne(masks[:, 1:], masks[:, :-1], out=change[:, 1:h])
    top, bottom = masks[:, 0], masks[:, h - 1]  # (n, w)
    if y0 == 0 and y1 == big_h:
        # Whole columns: a column's top follows the previous column's bottom, and the crop's
        # bottom edge is the next column's top (written there), except after the last column.
        change[:, 0, 0] = top[:, 0]
        torch.ne(top[:, 1:], bottom[:, :-1], out=change[:, 0, 1:])
        change[:, h] = False
        if x1 < big_w:
            change[:, h, w - 1] = bottom[:, w - 1]
    else:
        # Zeros above and below the crop: the column's edges are changes on their own.
        change[:, 0] = top
        change[:, h] = bottom
        if y1 == big_h and x1 == big_w:
            change[:, h, w - 1] = False  # would be index H*W: the end, not a change
    flat = _flat_nonzero(change)  # row-major: by mask, then row, then column
    mask, rest = flat // ((h + 1) * w), flat % ((h + 1) * w)
    pos = (rest % w + x0) * big_h + (rest // w + y0)
    return torch.sort(mask * (big_h * big_w) + pos).values


def _areas_and_boxes(pos: torch.Tensor, owner: torch.Tensor, offsets: torch.Tensor,
                     hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """From the change points alone (int64 K positions, int64 K owners, int64 N+1 offsets):
    int64 N areas and int64 Nx4 XYXY inclusive boxes ([0, 0, 0, 0] when empty). No sync: the
    odd change points (ends of runs) take part with neutral values instead of being dropped."""
    big_h, big_w = hw
    n = len(offsets) - 1
    # Runs of 1s start at a mask's even change points and end (exclusive) at the next one,
    # or at H*W when a mask's number of change points is odd
    local = torch.arange(len(pos), device=pos.device) - offsets[owner]
    last = local == offsets[owner + 1] - offsets[owner] - 1
    s, e = pos, torch.where(last, big_h * big_w, pos.roll(-1)) - 1  # a run's first, last pixel
    start = local % 2 == 0
    areas = torch.zeros(n, dtype=torch.long, device=pos.device).index_add_(
        0, owner, torch.where(start, e - s + 1, 0))
    # A run over a column's end covers the bottom row of one column and the top of the next
    x_first, x_last = s // big_h, e // big_h
    across = x_first != x_last
    y_first = torch.where(across, 0, s % big_h)
    y_last = torch.where(across, big_h - 1, e % big_h)
    boxes = torch.zeros(n, 4, dtype=torch.long, device=pos.device)
    for col, values, how, neutral in ((0, x_first, "amin", big_w), (1, y_first, "amin", big_h),
                                      (2, x_last, "amax", -1), (3, y_last, "amax", -1)):
        boxes[:, col].scatter_reduce_(0, owner, torch.where(start, values, neutral), how,
                                      include_self=False)
    return areas, boxes


def masks_to_runs(masks: torch.Tensor, crop_box: list[int] | None = None,
                  orig_hw: tuple[int, int] | None = None, chunk_pixels: int = CHUNK_PIXELS
                  ) -> MaskRuns:
    """bool NxhxW masks (on any device) of the crop `crop_box` (XYXY in the image, default the
    whole image) of an image of `orig_hw` (default hxw) -> their change points, areas and boxes
    in the image frame, on the host. The uncropped masks are never built; the work is done in
    chunks of at most `chunk_pixels` crop pixels (one sync each; areas and boxes come from the
    change points) and all results come back in one copy."""
    crop_box, orig_hw = _check_crop(masks, crop_box, orig_hw)
    n, h, w = masks.shape
    big_h, big_w = orig_hw
    numel = big_h * big_w
    device = masks.device
    step = max(1, chunk_pixels // ((h + 1) * w))
    buffer = torch.empty(min(n, step) * (h + 1) * w, dtype=torch.bool, device=device)
    keys = [_change_points(masks[start : start + step], crop_box, orig_hw, buffer) + start * numel
            for start in range(0, n, step)]
    key = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long, device=device)
    owner, pos = key // numel, key % numel
    # owner is sorted: mask i's points start at the first owner >= i (no sync)
    offsets = torch.searchsorted(owner, torch.arange(n + 1, device=device))
    areas, boxes = _areas_and_boxes(pos, owner, offsets, orig_hw)
    # One copy back: the int64 fields seen as int32 pairs, then the positions (int32 if they fit)
    pos_dtype, pos_np = (torch.int32, np.int32) if numel < 2**31 else (torch.int64, np.int64)
    small = torch.cat([offsets, areas, boxes.flatten()])
    host = torch.cat([small.view(torch.int32), pos.to(pos_dtype).view(torch.int32)]).cpu().numpy()
    small_host = host[: 2 * len(small)].view(np.int64)
    return MaskRuns(hw=(big_h, big_w), changes=host[2 * len(small) :].view(pos_np),
                    offsets=small_host[: n + 1], areas=small_host[n + 1 : 2 * n + 1],
                    boxes=small_host[2 * n + 1 :].reshape(n, 4))


def masks_to_annotations(masks: torch.Tensor, crop_box: list[int] | None = None,
                         orig_hw: tuple[int, int] | None = None) -> list[dict]:
    """bool NxhxW masks of a crop (see `masks_to_runs`) -> N SA-1B fields (see
    `runs_to_annotations`): the device half then the host half."""
    return runs_to_annotations(masks_to_runs(masks, crop_box, orig_hw))
