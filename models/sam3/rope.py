"""2-D axial rotary position embedding (RoPE) of the SAM 3 ViT.

A head of `dim` channels is seen as dim/2 complex pairs: the first dim/4 pairs turn with the
token's column, the last dim/4 with its row, at frequencies theta^(-4i/dim), i < dim/4. With
interpolation (the SAM 3 global blocks) positions are scaled so that a grid larger than the one
the frequencies were trained on spans the same angles (`scale = trained size / grid size`).
"""

from __future__ import annotations

import torch


def axial_frequencies(dim: int, end_x: int, end_y: int, theta: float = 10000.0,
                      scale: float = 1.0) -> torch.Tensor:
    """Unit complex rotations of the tokens of an end_y x end_x grid, row-major:
    (end_x*end_y) x (dim/2) complex64 (column half first, then row half)."""
    if dim % 4:
        raise ValueError(f"expected a head width divisible by 4, got {dim}")
    quarter = dim // 4
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 4)[:quarter].float() / dim))  # (dim/4,)
    index = torch.arange(end_x * end_y, dtype=torch.float32)
    col = (index % end_x).float() * scale
    row = torch.div(index, end_x, rounding_mode="floor").float() * scale
    angles_x = torch.outer(col, inv_freq)  # (L, dim/4)
    angles_y = torch.outer(row, inv_freq)
    rot_x = torch.polar(torch.ones_like(angles_x), angles_x)
    rot_y = torch.polar(torch.ones_like(angles_y), angles_y)
    return torch.cat([rot_x, rot_y], dim=-1)


def _rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """...xLxC (any float dtype) turned by Lx(C/2) complex rotations, in float32; returns x's
    dtype."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)


def apply_rope(q: torch.Tensor, k: torch.Tensor,
               rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys BxheadsxLxC (same L) by Lx(C/2) complex64 `rotations`."""
    expected = (q.shape[-2], q.shape[-1] // 2)
    if tuple(rotations.shape) != expected:
        raise ValueError(f"expected rotations of shape {expected} for queries of shape "
                         f"{tuple(q.shape)}, got {tuple(rotations.shape)}")
    return _rotate(q, rotations), _rotate(k, rotations)
