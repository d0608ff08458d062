"""Box helpers of the SAM 3 detector: box formats and the clamped logit of box coordinates."""

from __future__ import annotations

import torch

INVERSE_SIGMOID_EPS = 1e-3  # the official clamp of x and 1 - x before the log ratio


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """...x4 (center x, center y, width, height) -> ...x4 (x0, y0, x1, y1), same dtype."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """...x4 (x0, y0, x1, y1) -> ...x4 (center x, center y, width, height), same dtype."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def inverse_sigmoid(x: torch.Tensor, eps: float = INVERSE_SIGMOID_EPS) -> torch.Tensor:
    """log(x / (1 - x)) of x clamped to [0, 1], numerator and denominator each at least `eps`
    (so the result lies in about [-6.9, 6.9]); any shape, same dtype."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))
