"""The SAM 3 vision trunk: a plain ViT (ViTDet style) with 2-D RoPE.

Patches of `patch_size` pixels (a convolution without bias) make a grid of tokens; the absolute
position table, trained at `pretrain_img_size` with a class token, has that token dropped and is
tiled (not resized) over the grid; then a LayerNorm (`ln_pre`) and `depth` pre-norm blocks. Blocks
attend within square windows (zero-padded to a multiple of the window) except the global ones;
every block rotates queries and keys by RoPE over its own attention grid (the window, or the whole
grid, whose positions are scaled down to the window's span when `use_interp_rope`). The output
is the last global block's tokens as one feature map.

Names equal the official `sam3.model.vitdet.ViT` as SAM 3 builds it (no class token kept, no
relative position tables, no layer scale, no final norm), so its state dict keys, the RoPE
rotations `blocks.i.attn.freqs_cis` (complex64, persistent) included, load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..image_encoder import window_partition, window_unpartition
from .rope import apply_rope, axial_frequencies


class PatchEmbed(nn.Module):
    """Bx3xHxW image -> Bx(H/p)x(W/p)xC tokens (pxp convolution, stride p), channels last."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3,
                 bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size,
                              bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class RopeAttention(nn.Module):
    """Multi-head self-attention over an HxW grid with 2-D RoPE: NxHxWxdim -> NxHxWxdim.

    `grid` is the (H, W) the block attends over (its window, or the whole token grid);
    `rope_pt_size` the grid the rotations were trained on, used with `rope_interp` to scale
    positions by rope_pt_size[0] / grid[0]."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int],
                 rope_pt_size: tuple[int, int], rope_interp: bool = True,
                 rope_theta: float = 10000.0, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"expected num_heads to divide {dim}, got {num_heads}")
        self.num_heads = num_heads
        self.grid = tuple(grid)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        scale = rope_pt_size[0] / grid[0] if rope_interp else 1.0
        self.register_buffer("freqs_cis", axial_frequencies(
            dim // num_heads, end_x=grid[0], end_y=grid[1], theta=rope_theta, scale=scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        if (h, w) != self.grid:
            raise ValueError(f"expected a {self.grid} attention grid, got {(h, w)}")
        qkv = self.qkv(x).reshape(n, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, h*w, c)
        q, k = apply_rope(q, k, self.freqs_cis)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, h*w, c)
        return self.proj(out.permute(0, 2, 1, 3).reshape(n, h, w, -1))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 on ...xdim (keys `fc1`, `fc2`, as timm's Mlp)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + attn(norm1(x)) (within windows unless window_size is 0), then x + mlp(norm2(x)),
    on BxHxWxdim tokens of a `grid` token grid."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, grid: tuple[int, int],
                 window_size: int, rope_pt_size: tuple[int, int], rope_interp: bool = True,
                 rope_theta: float = 10000.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        attn_grid = (window_size, window_size) if window_size else tuple(grid)
        self.attn = RopeAttention(dim, num_heads, attn_grid, rope_pt_size, rope_interp,
                                  rope_theta, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            h, w = x.shape[1:3]
            windows, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def tile_position_table(pos_embed: torch.Tensor, hw: tuple[int, int],
                        has_cls_token: bool) -> torch.Tensor:
    """1x(1+s*s)xC (or 1x(s*s)xC without the class position) table -> 1xHxWxC: the class
    position dropped, the sxs grid repeated over HxW and cropped."""
    table = pos_embed[:, 1:] if has_cls_token else pos_embed
    side = int(round(table.shape[1] ** 0.5))
    if side * side != table.shape[1]:
        raise ValueError(f"expected a square position table, got {table.shape[1]} positions")
    h, w = hw
    grid = table.reshape(1, side, side, -1)
    reps = (-(-h // side), -(-w // side))
    return grid.repeat(1, reps[0], reps[1], 1)[:, :h, :w]


class ViT(nn.Module):
    """Normalised Bx3xSxS float32 image (S = img_size) -> [BxCx(S/p)x(S/p)] (a list of one map,
    C = embed_dim, p = patch_size: the last global block's output, channels first).

    SAM 3 (`build_sam3_vision` in `neck.py`): img_size 1008, patch 14, width 1024, 32 blocks of
    16 heads, mlp_ratio 4.625, windows of 24 with global blocks 7, 15, 23, 31, position table
    from 336 px, RoPE interpolated from the window to the 72x72 grid."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, window_size: int,
                 global_att_blocks: tuple[int, ...], pretrain_img_size: int,
                 rope_pt_size: int | None = None, use_interp_rope: bool = True,
                 rope_theta: float = 10000.0, pretrain_use_cls_token: bool = True,
                 in_chans: int = 3, qkv_bias: bool = True, bias_patch_embed: bool = False,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        if not global_att_blocks or max(global_att_blocks) >= depth:
            raise ValueError(f"expected global blocks among the {depth} blocks, got "
                             f"{tuple(global_att_blocks)}")
        self.img_size = img_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.full_attn_ids = list(global_att_blocks)
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.channel_list = [embed_dim]
        positions = (pretrain_img_size // patch_size) ** 2 + int(pretrain_use_cls_token)
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, embed_dim))  # first, as official
        self.patch_embed = PatchEmbed(patch_size, embed_dim, in_chans, bias=bias_patch_embed)
        pt = rope_pt_size or window_size
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, self.grid,
                  window_size=0 if i in self.full_attn_ids else window_size,
                  rope_pt_size=(pt, pt), rope_interp=use_interp_rope, rope_theta=rope_theta,
                  qkv_bias=qkv_bias, norm_eps=norm_eps)
            for i in range(depth))
        self.ln_pre = nn.LayerNorm(embed_dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # (B, H, W, C)
        if tuple(x.shape[1:3]) != self.grid:
            raise ValueError(f"expected {self.img_size} px images ({self.grid} tokens), got "
                             f"{tuple(x.shape[1:3])} tokens")
        x = x + tile_position_table(self.pos_embed, self.grid, self.pretrain_use_cls_token)
        x = self.ln_pre(x)
        last = self.full_attn_ids[-1]
        for block in self.blocks[: last + 1]:
            x = block(x)
        return [x.permute(0, 3, 1, 2)]  # (B, C, H, W)
