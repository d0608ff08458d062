"""RoIAlign in plain torch, vectorised over boxes, bins and samples (torchvision's
`ops.roi_align` semantics), for the geometry encoder's box pooling.

Each output bin averages a grid of bilinear samples. torchvision's bilinear sample is separable:
a sample at (y, x) is zero when y is outside [-1, H] or x outside [-1, W], and otherwise weighs
row h by max(0, 1 - |clamp(y, 0, H - 1) - h|) and column w likewise. So the average over a
bin's gh x gw samples is Ay @ feature @ Ax^T, with Ay (bins x H) the summed row weights of the
bin's gh sample rows and Ax (bins x W) the summed column weights: two batched matmuls per box.
With `sampling_ratio <= 0` the grid is adaptive, ceil(roi size / bins) per box and axis; boxes
with smaller grids mask out the samples beyond theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _boxes_with_index(boxes: torch.Tensor | Sequence[torch.Tensor],
                      device: torch.device) -> torch.Tensor:
    """A list of Kix4 XYXY (one per image) or a Kx5 tensor (image index first) -> Kx5."""
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(f"expected boxes Kx5 (index, x1, y1, x2, y2), got {list(boxes.shape)}")
        return boxes.to(device)
    rows = []
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"expected the boxes of image {i} Kx4 XYXY, got {list(b.shape)}")
        rows.append(torch.cat([b.new_full((len(b), 1), float(i)), b], 1).to(device))
    if not rows:
        return torch.zeros(0, 5, device=device)
    return torch.cat(rows, 0)


def _axis_weights(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor,
                  bins: int, max_grid: int, length: int) -> torch.Tensor:
    """Summed bilinear weights of each bin's samples along one axis.

    start, bin_size, grid: K float (first edge, bin size, samples per bin of each box).
    -> K x bins x length float: for bin i, sum over samples s < grid of the weights of
    position start + i * bin_size + (s + 0.5) * bin_size / grid."""
    dtype, device = start.dtype, start.device
    i = torch.arange(bins, dtype=dtype, device=device)[None, :, None]  # 1 x bins x 1
    s = torch.arange(max_grid, dtype=dtype, device=device)[None, None, :]  # 1 x 1 x G
    step = (bin_size / grid.clamp(min=1))[:, None, None]
    pos = start[:, None, None] + i * bin_size[:, None, None] + (s + 0.5) * step  # K x bins x G
    keep = (s < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(0, length - 1)
    cells = torch.arange(length, dtype=dtype, device=device)
    weights = (1 - (pos[..., None] - cells).abs()).clamp(min=0)  # K x bins x G x length
    return (weights * keep[..., None]).sum(2)


def roi_align(input: torch.Tensor, boxes: torch.Tensor | Sequence[torch.Tensor],
              output_size: int | tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """Average-pool each box of `input` into output_size bins, as torchvision's roi_align.

    input: NxCxHxW float. boxes: a list of N tensors Kix4 (x1, y1, x2, y2 in input pixels
    before `spatial_scale`), or one Kx5 tensor (image index, x1, y1, x2, y2).
    sampling_ratio: samples per bin and axis; <= 0 means ceil(roi size / bins) for each box.
    aligned: shift the boxes by -0.5 pixel (pixel centres at integer + 0.5); without it a box
    is at least 1x1. -> (sum Ki)xCxPhxPw in input's dtype, boxes in order."""
    if input.ndim != 4:
        raise ValueError(f"expected input NxCxHxW, got {list(input.shape)}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = input.shape
    rois = _boxes_with_index(boxes, input.device)
    if len(rois) == 0:
        return input.new_zeros(0, c, ph, pw)
    rois = rois.to(torch.float32 if input.dtype in (torch.float16, torch.bfloat16)
                   else input.dtype)
    index = rois[:, 0].long()
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, float(sampling_ratio))
        grid_w = torch.full_like(roi_w, float(sampling_ratio))
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph), torch.ceil(roi_w / pw)
    max_h = max(int(grid_h.max().item()), 1)
    max_w = max(int(grid_w.max().item()), 1)
    rows = _axis_weights(y1, bin_h, grid_h, ph, max_h, h)  # K x ph x H
    cols = _axis_weights(x1, bin_w, grid_w, pw, max_w, w)  # K x pw x W
    rows = rows / (grid_h * grid_w).clamp(min=1)[:, None, None]
    feats = input[index]  # K x C x H x W
    out = torch.matmul(rows.to(input.dtype)[:, None], feats)  # K x C x ph x W
    return torch.matmul(out, cols.to(input.dtype)[:, None].transpose(-1, -2))  # K x C x ph x pw
