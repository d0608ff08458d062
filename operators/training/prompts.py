"""Stage-2 prompts drawn on the training device from the instances of a batch: boxes with SAM's
noise, 1..N positive points inside a mask, and EdgeSAM's refinement point in the region where
the student and its target disagree. All coordinates are in the prompt frame.
"""

from __future__ import annotations

import torch

PAD_LABEL = -1  # a point slot that is no point (SAM's `not_a_point_embed`, EfficientSAM's pad)


def jitter_boxes(boxes: torch.Tensor, noise: float, max_px: float, gen: torch.Generator
                 ) -> torch.Tensor:
    """float Px4 XYXY -> Px4 with Gaussian noise on each coordinate of std `noise` x the box's
    side along it, at most `max_px` (SAM appendix A: 10% of the side, max 20 px)."""
    if noise <= 0:
        return boxes
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    std = torch.stack([w, h, w, h], dim=1).mul(noise).clamp(max=max_px)  # (P, 4)
    eps = torch.randn(boxes.shape, generator=gen, device=boxes.device)
    out = boxes + eps * std
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


def _sample_cells(weights: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """float PxM non-negative weights (a row may be all zero) -> int64 Pxk cell indices drawn
    with replacement in proportion to them (uniformly for an all-zero row)."""
    w = weights.float() + (weights.sum(1, keepdim=True) == 0).float()  # empty -> uniform
    return torch.multinomial(w, k, replacement=True, generator=gen)


def _cell_coords(cells: torch.Tensor, size: int, frame: int, gen: torch.Generator
                 ) -> torch.Tensor:
    """int64 ...xk cell indices of a size x size grid -> float ...xkx2 (x, y) in a `frame`
    square: a uniform position inside each cell."""
    ys = torch.div(cells, size, rounding_mode="floor").float()
    xs = (cells % size).float()
    u = torch.rand((*cells.shape, 2), generator=gen, device=cells.device)
    scale = frame / size
    return torch.stack([(xs + u[..., 0]) * scale, (ys + u[..., 1]) * scale], dim=-1)


def sample_points(masks: torch.Tensor, boxes: torch.Tensor, max_points: int, frame: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive point prompts: for each of P masks (uint8/bool PxTxT in the prompt frame) a
    random count n in 1..max_points of points drawn uniformly inside it (EfficientViT-SAM:
    1-10), padded to max_points with PAD_LABEL. A mask that vanished at T gets its box's centre
    (float Px4 XYXY).

    Returns float PxNx2 coordinates in the `frame` square and int64 PxN labels (1 or pad)."""
    p, t = masks.shape[0], masks.shape[-1]
    flat = masks.reshape(p, -1).float()
    coords = _cell_coords(_sample_cells(flat, max_points, gen), t, frame, gen)  # (P, N, 2)
    empty = flat.sum(1) == 0
    centre = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    coords = torch.where(empty[:, None, None], centre[:, None, :].expand_as(coords), coords)
    n = torch.randint(1, max_points + 1, (p,), generator=gen, device=masks.device)
    slots = torch.arange(max_points, device=masks.device)[None, :]
    labels = torch.where(slots < n[:, None], 1, PAD_LABEL).long()
    return coords, labels


def refinement_points(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor,
                      frame: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """EdgeSAM's refinement: one point per prompt drawn uniformly in the disagreement of the
    prediction and the target inside the region (bool PxTxT each): label 1 where the target
    is (a missed pixel), 0 where it is not (a false one); PAD_LABEL when they agree.

    Returns float Px1x2 coordinates in the `frame` square and int64 Px1 labels."""
    p, t = pred.shape[0], pred.shape[-1]
    wrong = ((pred != target) & region).reshape(p, -1)
    cells = _sample_cells(wrong.float(), 1, gen)  # (P, 1)
    coords = _cell_coords(cells, t, frame, gen)
    hit = target.reshape(p, -1).gather(1, cells)  # (P, 1)
    labels = torch.where(hit, 1, 0).long()
    labels = torch.where(wrong.any(1, keepdim=True), labels, PAD_LABEL)
    return coords, labels
