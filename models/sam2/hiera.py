"""Hiera (hierarchical ViT, as SAM 2 uses it): the image trunk of SAM 2.

A 7x7 stride-4 convolution makes tokens, a position table (a coarse background table resized
bicubic to the token grid plus a small window table tiled over it) is added, then four stages
of pre-norm blocks. The first block of stages 2-4 halves the grid by max-pooling its queries
(2x2) and doubles the width (its shortcut is a projection, pooled the same way) and the number
of heads. Blocks attend within square windows (zero-padded to a multiple of the window), except
the global blocks; a stage's first block still uses the previous stage's window size. The
output is the feature map of every stage end, finest first.

Names equal the official `sam2.modeling.backbones.hieradet.Hiera`, so its state dict keys
(`image_encoder.trunk.*`) load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..image_encoder import window_partition, window_unpartition
from .layers import MLP

NORM_EPS = 1e-6  # every LayerNorm of the trunk


class PatchEmbed(nn.Module):
    """Bx3xHxW image -> Bx(H/4)x(W/4)xC tokens (7x7 conv, stride 4, padding 3), channels last."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def pool_tokens(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """BxHxWxC -> Bx(H/s)x(W/s)xC with `pool` (a MaxPool2d) over the grid; None: unchanged."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Self-attention over the tokens of each window, queries optionally pooled:
    NxHxWxdim -> Nx(H/s)x(W/s)xdim_out (s = the pool stride, 1 without)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int,
                 q_pool: nn.Module | None = None) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"expected num_heads to divide {dim_out}, got {num_heads}")
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each (N, h*w, heads, c)
        if self.q_pool is not None:
            q = pool_tokens(q.reshape(n, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(n, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2))  # (N, heads, h*w, c)
        return self.proj(out.transpose(1, 2).reshape(n, h, w, -1))


class MultiScaleBlock(nn.Module):
    """x + attn(norm1(x)) (windowed unless window_size is 0), then x + mlp(norm2(x)), on
    BxHxWxC tokens. With q_stride the block pools: BxHxWxdim -> Bx(H/2)x(W/2)xdim_out."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float = 4.0,
                 q_stride: tuple[int, int] | None = None, window_size: int = 0) -> None:
        super().__init__()
        if q_stride is not None and window_size == 0:
            raise ValueError("expected a windowed block where queries are pooled, got "
                             "window_size=0 (the official code fails there too)")
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.pool = None if q_stride is None else nn.MaxPool2d(q_stride, stride=q_stride)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=NORM_EPS)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, act=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:  # the shortcut changes width (and grid) with the block
            shortcut = pool_tokens(self.proj(x), self.pool)
        window = self.window_size
        if window:
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if window:
            h, w = shortcut.shape[1:3]
            if self.q_stride is not None:  # the windows shrank with the queries
                window //= self.q_stride[0]
                padded = (h + (-h) % window, w + (-w) % window)
            x = window_unpartition(x, window, padded, (h, w))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Normalised Bx3xSxS image -> the four stage outputs, finest first:
    Bx`C`x(S/4)x(S/4), Bx2Cx(S/8)x(S/8), Bx4Cx(S/16)x(S/16), Bx8Cx(S/32)x(S/32) (C = embed_dim;
    float32, or the autocast dtype)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        stages: tuple[int, ...],
        global_att_blocks: tuple[int, ...],
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"expected a window size per stage ({len(stages)}), got "
                             f"{len(window_spec)}")
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        pooled = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim,
                                                  *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        stage, dim = 0, embed_dim
        for i in range(sum(stages)):
            # The window size lags a block: a stage's first block keeps the previous size
            window = 0 if i in global_att_blocks else window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, num_heads, q_stride=q_stride if i in pooled else None,
                window_size=window))
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def position_table(self, hw: tuple[int, int]) -> torch.Tensor:
        """1xHxWxC: the background table resized bicubic to hw plus the window table tiled."""
        table = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window = self.pos_embed_window
        reps = [t // s for t, s in zip(table.shape, window.shape, strict=True)]
        return (table + window.tile(reps)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # (B, S/4, S/4, C)
        x = x + self.position_table(tuple(x.shape[1:3]))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
