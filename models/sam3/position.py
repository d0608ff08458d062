"""Sine position encodings of SAM 3: of feature maps (the neck, every level) and of normalised
box and point coordinates (the geometry encoder).

A coordinate u becomes F = num_pos_feats/2 channels: u / temperature^(2*floor(i/2)/F), sine on
the even channels i and cosine on the odd ones. A map's positions are its 1-based row and column
indices, divided by the map's height / width (+1e-6) and multiplied by `scale` (2*pi) when
normalised; coordinates given as fractions of the image are only multiplied by `scale`. Rows
come first, then columns. The module has no weights; the official one also keeps a cache of
map encodings by size, which changes no value and is left out here.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Bx?xHxW map -> Bx`num_pos_feats`xHxW float32 (row channels, then column channels)."""

    def __init__(self, num_pos_feats: int, temperature: int = 10000, normalize: bool = True,
                 scale: float | None = None) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"expected an even number of channels, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("expected normalize=True with a scale, got normalize=False")
        self.num_pos_feats = num_pos_feats // 2  # channels per axis, as the official module
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def _sine(self, u: torch.Tensor) -> torch.Tensor:
        """N positions (float32) -> NxF: sin on even channels, cos on odd ones."""
        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=u.device)
        dim_t = self.temperature ** (2 * (i // 2) / self.num_pos_feats)
        phase = u[:, None] / dim_t  # (N, F)
        return torch.stack((phase[:, 0::2].sin(), phase[:, 1::2].cos()), dim=2).flatten(1)

    def _axis(self, n: int, device: torch.device) -> torch.Tensor:
        """Encoding of the n positions of one map axis: nxF float32."""
        u = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        if self.normalize:
            u = u / (u[-1:] + 1e-6) * self.scale
        return self._sine(u)

    def encode_xy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N normalised x and N y coordinates (float32 in [0, 1]) -> (NxF, NxF) float32
        encodings of x and of y (the official `_encode_xy`)."""
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"expected two 1-D tensors of one length, got shapes "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        return self._sine(x * self.scale), self._sine(y * self.scale)

    _encode_xy = encode_xy  # the name the official geometry encoder calls

    @torch.no_grad()
    def encode_boxes(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                     h: torch.Tensor) -> torch.Tensor:
        """N boxes as normalised centre x, y and size w, h (each N float32) ->
        Nx(2F+2) float32: [enc(y), enc(x), h, w]."""
        pos_x, pos_y = self.encode_xy(x, y)
        return torch.cat((pos_y, pos_x, h[:, None], w[:, None]), dim=1)

    @torch.no_grad()
    def encode_points(self, x: torch.Tensor, y: torch.Tensor,
                      labels: torch.Tensor) -> torch.Tensor:
        """BxN normalised point x, y and labels (float32) -> BxNx(2F+1) float32:
        [enc(y), enc(x), label]."""
        if not x.shape == y.shape == labels.shape or x.ndim != 2:
            raise ValueError(f"expected x, y and labels of one BxN shape, got "
                             f"{tuple(x.shape)}, {tuple(y.shape)}, {tuple(labels.shape)}")
        b, n = x.shape
        pos_x, pos_y = self.encode_xy(x.flatten(), y.flatten())
        return torch.cat((pos_y.reshape(b, n, -1), pos_x.reshape(b, n, -1),
                          labels[:, :, None]), dim=2)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        rows = self._axis(h, x.device)[:, None, :].expand(h, w, -1)  # (H, W, F)
        cols = self._axis(w, x.device)[None, :, :].expand(h, w, -1)
        pos = torch.cat((rows, cols), dim=2).permute(2, 0, 1)  # (2F, H, W)
        return pos[None].repeat(b, 1, 1, 1)
