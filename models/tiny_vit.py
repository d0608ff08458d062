"""MobileSAM: SAM's prompt encoder and mask decoder behind TinyViT-5M, a small image encoder of
convolutions and window attention distilled from SAM's ViT-H.

TinyViT on a normalised Bx3x1024x1024 image:

- patch embed: two 3x3 stride-2 conv+BatchNorm (GELU between) -> Bx64x256x256
- stage 0: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU)
- stages 1-3: TinyViT blocks: attention inside 7x7 or 14x14 windows with a learned bias per
  head and per (|dy|, |dx|) offset, then a 3x3 depthwise conv+BN, then an MLP
- between stages a patch merge (1x1 conv, 3x3 depthwise conv with a stride, 1x1 conv). The
  merge into the last stage keeps stride 1 so that stages 2 and 3 both run at 64x64:
  64x256x256 -> 128x128x128 -> 160x64x64 -> 320x64x64
- neck (as SAM's): 1x1 conv to 256, LayerNorm2d, 3x3 conv, LayerNorm2d -> Bx256x64x64.

Details that change the numbers, all as in the official model:
- the attention and the MLP normalise their own input (LayerNorm inside the sub-layer), and a
  window that does not divide the grid (7 into 128 and 64, 14 into 64) is zero-padded before
  that norm, so padded tokens take part as keys and values with the norm's bias as input;
- the qkv projection is laid out per head, (q, k, v) of head 0 first, unlike SAM's ViT;
- GELU is the exact (erf) one; BatchNorm and LayerNorm eps 1e-5, the neck's LayerNorm2d 1e-6.

Eval mode uses a cached copy of the gathered attention biases (buffer `ab`), refreshed on every
`train()` / `eval()` and after every `load_state_dict`, so weights loaded into a model already
in eval mode are used as loaded. Module, parameter and buffer names equal the official state
dict, so `mobile_sam.pt` (a plain state dict) loads with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .image_encoder import window_partition, window_unpartition
from .sam import Sam, build_sam

NORM_EPS = 1e-5  # every BatchNorm2d and LayerNorm of the encoder (torch's default)
NECK_EPS = 1e-6  # the neck's LayerNorm2d, as in SAM


# -- layers -------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """Conv2d ("same" padding, no bias) then BatchNorm2d:
    float BxCinxHxW -> BxCoutx(H/stride)x(W/stride)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    """Two 3x3 stride-2 ConvBN with GELU between: float Bx3xHxW -> BxDx(H/4)x(W/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, stride=2),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project (GELU after the first two),
    add the input, GELU. float BxCxHxW -> BxCxHxW."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 conv to `out_dim`, 3x3 depthwise conv with `stride`, 1x1 conv (GELU after the first
    two): float BxCinxHxW -> BxCoutx(H/stride)x(W/stride)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def attention_bias_index(window: int) -> torch.Tensor:
    """int64 NxN, N = window**2: for tokens i, j of a window in raster order, the column of
    their offset in the bias table, |dy| * window + |dx| (the official table's order: offsets
    numbered as first met from token 0, which meets them all in that order)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


def _refresh_after_load(module: nn.Module, incompatible_keys: object) -> None:
    module.refresh_bias_cache()


class WindowAttention(nn.Module):
    """LayerNorm, then multi-head self-attention with a learned additive bias per head and per
    relative offset: float (B*nW)xNxC windows -> (B*nW)xNxC, N = window**2.

    State: `attention_biases` heads x window**2 (the table), `attention_bias_idxs` NxN
    (non-persistent), `ab` heads x N x N (non-persistent cache of the gathered table, used in
    eval mode; training gathers afresh each call)."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"expected dim divisible by num_heads, got {dim} and {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("attention_bias_idxs", attention_bias_index(window), False)
        self.register_buffer("ab", self._gather_biases(), False)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _gather_biases(self) -> torch.Tensor:
        return self.attention_biases.detach()[:, self.attention_bias_idxs]

    @torch.no_grad()
    def refresh_bias_cache(self) -> None:
        """Recompute the eval-mode cache `ab` from the current `attention_biases`."""
        self.ab = self._gather_biases()

    def train(self, mode: bool = True) -> WindowAttention:
        super().train(mode)
        self.refresh_bias_cache()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = self.norm(x)
        # Per head, q, k and v are consecutive head_dim slices: (B, heads, N, 3 * head_dim).
        qkv = self.qkv(x).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, heads, N, head_dim)
        if self.training:
            bias = self.attention_biases[:, self.attention_bias_idxs]
        else:
            bias = self.ab
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class NormMlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear: float ...xD -> ...xD."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """float BxHxWxC -> BxHxWxC:
    x = x + window_attention(x); x = depthwise_conv_bn(x); x = x + mlp(x)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = NormMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        size = self.window
        # Zero-padded windows, (B*nW, window**2, C); the attention normalises after padding.
        windows, padded_hw = window_partition(x, size)
        out = self.attn(windows.reshape(-1, size * size, c))
        x = x + window_unpartition(out.view(-1, size, size, c), size, padded_hw, (h, w))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """MBConv blocks, then a patch merge: float BxCxHxW -> BxC'x(H/stride)x(W/stride)."""

    def __init__(
        self, dim: int, depth: int, out_dim: int, stride: int, expand_ratio: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT blocks, then a patch merge unless `out_dim` is None:
    float BxCxHxW -> BxC'x(H/stride)x(W/stride) (BxCxHxW without the merge)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        out_dim: int | None,
        stride: int = 2,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = None if out_dim is None else PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C) for the blocks
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


# -- model --------------------------------------------------------------------------------------


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck: float Bx3xSxS normalised, padded image ->
    Bx`out_chans`x(S/16)x(S/16) (Bx256x64x64 for the official S=1024).

    Stage 0 is convolutional (its `num_heads` and `window_sizes` entries are unused);
    `merge_strides[i]` is the stride of the patch merge after stage i.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        merge_strides: tuple[int, ...] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        last = len(depths) - 1
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        stages: list[nn.Module] = [
            ConvStage(embed_dims[0], depths[0], embed_dims[1], merge_strides[0],
                      mbconv_expand_ratio)
        ]
        for i in range(1, len(depths)):
            stages.append(
                AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    out_dim=None if i == last else embed_dims[i + 1],
                    stride=merge_strides[i] if i < last else 1,
                )
            )
        self.layers = nn.ModuleList(stages)
        # The ImageNet classifier of the pretrained TinyViT: never run, kept only because the
        # official state dict holds it.
        self.norm_head = nn.LayerNorm(embed_dims[-1], eps=NORM_EPS)
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans, eps=NECK_EPS),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans, eps=NECK_EPS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, 64, S/4, S/4)
        for stage in self.layers:
            x = stage(x)  # ... -> (B, 320, S/16, S/16)
        return self.neck(x)  # (B, 256, S/16, S/16)


# -- builders -----------------------------------------------------------------------------------


def build_mobile_sam() -> Sam:
    """MobileSAM (TinyViT-5M encoder, 10.1M parameters), official file mobile_sam.pt.

    Same image pipeline and decoder as SAM: 1024 input, longest-side resize, zero pad, SAM
    mean/std, 256x64x64 embedding."""
    encoder = TinyViT(
        img_size=1024,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
        merge_strides=(2, 2, 1),
    )
    return build_sam(encoder)  # SAM's prompt encoder and mask decoder at their official sizes


def _build_small_student(image_size: int, embed_dims: tuple[int, ...], depths: tuple[int, ...],
                         num_heads: tuple[int, ...], window_sizes: tuple[int, ...],
                         decoder_mlp_dim: int, decoder_heads: int) -> Sam:
    """MobileSAM's design at a toy teacher's sizes: a four-stage TinyViT (merges 2, 2, 1: the
    grid is image_size / 16 a side), a 16-class head (never run), and SAM's neck, prompt
    encoder and mask decoder at the last stage's width, so the teacher's prompt encoder and
    mask decoder load into it."""
    width = embed_dims[-1]
    encoder = TinyViT(
        img_size=image_size,
        embed_dims=embed_dims,
        depths=depths,
        num_heads=num_heads,
        window_sizes=window_sizes,
        merge_strides=(2, 2, 1),
        out_chans=width,
        num_classes=16,
    )
    return build_sam(encoder, prompt_embed_dim=width, image_size=image_size,
                     decoder_mlp_dim=decoder_mlp_dim, decoder_heads=decoder_heads,
                     iou_head_hidden_dim=width)


def build_mobile_sam_tiny() -> Sam:
    """The student of `sam_tiny` in tests: 32 -> 16 -> 8 -> 8 tokens a side at a 128 input,
    windows 7/4/4/3 (the 3 pads the 8x8 grid, as the official 7 pads 64), `sam_tiny`'s 32x8x8
    embedding and 128 prompt frame."""
    return _build_small_student(128, (8, 16, 24, 32), (1, 1, 1, 1), (1, 1, 2, 2),
                                (7, 4, 4, 3), decoder_mlp_dim=64, decoder_heads=2)


def build_mobile_sam_demo() -> Sam:
    """The student of `sam_demo` (the demo's stage 1): 64 -> 32 -> 16 -> 16 tokens a side at
    a 256 input, windows 7/7/8/8, `sam_demo`'s 64x16x16 embedding and 256 prompt frame."""
    return _build_small_student(256, (16, 32, 48, 64), (1, 1, 2, 1), (1, 2, 3, 4),
                                (7, 7, 8, 8), decoder_mlp_dim=256, decoder_heads=4)


BUILDERS = {"mobile_sam": build_mobile_sam, "mobile_sam_tiny": build_mobile_sam_tiny,
            "mobile_sam_demo": build_mobile_sam_demo}

# Official checkpoint file names (ChaoningZhang/MobileSAM, weights/mobile_sam.pt).
OFFICIAL_FILES = {"mobile_sam": "mobile_sam.pt"}
