"""EfficientViT-SAM (L0, L1, L2, XL0, XL1): an EfficientViT-L backbone and a fusing neck in
place of SAM's ViT, with SAM's prompt encoder and mask decoder unchanged.

The backbone is a conv stem, stages of ResBlock / FusedMBConv / MBConv blocks, and in the last
stages EfficientViT blocks: ReLU linear attention over multi-scale (depthwise-aggregated) q/k/v
("LiteMLA") followed by an MBConv. The neck projects three stage outputs to 256 channels,
resizes each to 64x64 (bicubic), adds them, refines with FusedMBConv blocks and ends with a 1x1
conv and a channel LayerNorm: the usual SAM embedding, Bx256x64x64.

The L models run the encoder at 512x512 (the XL models at 1024x1024) while prompts and masks
stay in SAM's 1024 frame. Every norm has eps 1e-6 (the official zoo sets it on all of them,
the mask decoder's LayerNorms included). Every "gelu" of the encoder is the tanh approximation.
Module and parameter names equal the official state dicts, so the released files
(`{"state_dict": sd}` or a plain state dict) load with `strict=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .sam import Sam, build_sam

NORM_EPS = 1e-6  # every BatchNorm / LayerNorm of the official EfficientViT-SAM models
ATTENTION_EPS = 1e-15  # added to the linear-attention normaliser
EMBED_GRID = 64  # the neck resizes every stage to 64x64, the SAM embedding grid
EMBED_DIM = 256
PROMPT_FRAME = 1024  # prompts, low-res masks and postprocessing live in SAM's 1024 frame

# The official "gelu" activation is the tanh approximation, in backbone and neck alike.
TanhGELU = partial(nn.GELU, approximate="tanh")


# -- layers -------------------------------------------------------------------------------------


class ConvNormAct(nn.Module):
    """Conv2d with "same" padding, then optional BatchNorm2d, then optional tanh-GELU.

    BxCinxHxW -> BxCoutx(H/stride)x(W/stride), dtype of the input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=bias,
        )
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS) if norm else None
        self.act = TanhGELU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


class OpList(nn.Module):
    """Modules applied one after the other (kept under `op_list`, the official key)."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class Residual(nn.Module):
    """`main(x) + x`, or just `main(x)` when `skip` is False (a stage's strided first block,
    which the official model also keeps under `main`)."""

    def __init__(self, main: nn.Module, skip: bool = True) -> None:
        super().__init__()
        self.main = main
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + x if self.skip else out


class ResizeTo(nn.Module):
    """Bicubic resize (align_corners=False) of BxCxHxW to BxCx`size`x`size`, in float32;
    identity when the input already has that size."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        with torch.autocast(x.device.type, enabled=False):
            return F.interpolate(
                x.float(), (self.size, self.size), mode="bicubic", align_corners=False
            )


# -- blocks -------------------------------------------------------------------------------------
# `light` is the official "fewer_norm": biases instead of BatchNorm on all but the last conv.


class ResBlock(nn.Module):
    """Two 3x3 convs (GELU between): BxCinxHxW -> BxCoutx(H/stride)x(W/stride)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, light: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(
            in_channels, in_channels, 3, stride, bias=light, norm=not light, act=True
        )
        self.conv2 = ConvNormAct(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class FusedMBConv(nn.Module):
    """3x3 conv expanding to `expand_ratio` x Cin (GELU), 1x1 conv projecting to Cout:
    BxCinxHxW -> BxCoutx(H/stride)x(W/stride)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float,
        stride: int = 1,
        light: bool = False,
    ) -> None:
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.spatial_conv = ConvNormAct(
            in_channels, mid, 3, stride, bias=light, norm=not light, act=True
        )
        self.point_conv = ConvNormAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.spatial_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand (GELU), 3x3 depthwise (GELU), 1x1 project:
    BxCinxHxW -> BxCoutx(H/stride)x(W/stride)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: float,
        stride: int = 1,
        light: bool = False,
    ) -> None:
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.inverted_conv = ConvNormAct(
            in_channels, mid, 1, bias=light, norm=not light, act=True
        )
        self.depth_conv = ConvNormAct(
            mid, mid, 3, stride, groups=mid, bias=light, norm=not light, act=True
        )
        self.point_conv = ConvNormAct(mid, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention: BxCxHxW -> BxCxHxW.

    A 1x1 conv gives q, k, v for C / `head_dim` heads; each scale in `scales` adds as many
    heads again, made by a depthwise `scale`x`scale` conv and a grouped 1x1 conv over q/k/v.
    Per head, with q, k = ReLU(q), ReLU(k):  out_n = sum_m v_m (k_m . q_n) / (sum_m k_m . q_n)
    computed as (V K^T) Q in float32 (linear in the number of tokens). A 1x1 conv + BatchNorm
    projects the concatenated heads back to C channels.
    """

    def __init__(self, channels: int, head_dim: int = 32, scales: tuple[int, ...] = (5,)) -> None:
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = ATTENTION_EPS
        self.qkv = ConvNormAct(channels, 3 * inner, 1, norm=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    3 * inner, 3 * inner, s, padding=s // 2, groups=3 * inner, bias=False
                ),
                nn.Conv2d(3 * inner, 3 * inner, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvNormAct(inner * (1 + len(scales)), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, 3*inner, H, W)
        qkv = torch.cat([qkv, *(agg(qkv) for agg in self.aggreg)], dim=1)
        return self.proj(self._attend(qkv))

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Bx(heads*3*d)xHxW, each head's channels q|k|v -> Bx(heads*d)xHxW."""
        b, _, h, w = qkv.shape
        d = self.head_dim
        with torch.autocast(qkv.device.type, enabled=False):
            t = qkv.float().reshape(b, -1, 3 * d, h * w)  # (B, heads, 3d, N)
            q, k, v = F.relu(t[:, :, :d]), F.relu(t[:, :, d : 2 * d]), t[:, :, 2 * d :]
            # A row of ones under v makes the last output row the normaliser sum_m k_m . q_n
            v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)  # (B, heads, d+1, N)
            vk = torch.matmul(v, k.transpose(-1, -2))  # (B, heads, d+1, d)
            out = torch.matmul(vk, q)  # (B, heads, d+1, N)
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.reshape(b, -1, h, w).to(qkv.dtype)


class EfficientViTBlock(nn.Module):
    """Residual LiteMLA (context) then residual light MBConv (local): BxCxHxW -> BxCxHxW."""

    def __init__(
        self, channels: int, head_dim: int, expand_ratio: float, scales: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, head_dim, scales))
        self.local_module = Residual(MBConv(channels, channels, expand_ratio, light=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


# -- backbone and neck --------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """An EfficientViT-L backbone, one entry per stage; stage 0 is the stride-2 stem conv
    followed by `depths[0]` blocks, every later stage starts with a stride-2 block."""

    widths: tuple[int, ...]  # output channels; each stage halves the resolution
    depths: tuple[int, ...]  # blocks after the stem / after the strided first block
    blocks: tuple[str, ...]  # "res" | "fmb" | "mb" | "att" (LiteMLA, scale 5) | "att@3" (scale 3)
    expands: tuple[float, ...]  # expansion ratio of the stage's blocks (x4 for the strided one)
    light: tuple[bool, ...]  # "fewer norm": biases instead of BatchNorm inside the blocks
    head_dim: int = 32  # LiteMLA channels per head


def _local_block(
    kind: str, cin: int, cout: int, stride: int, expand: float, light: bool
) -> nn.Module:
    if kind == "res":
        return ResBlock(cin, cout, stride, light)
    if kind == "fmb":
        return FusedMBConv(cin, cout, expand, stride, light)
    if kind == "mb":
        return MBConv(cin, cout, expand, stride, light)
    raise ValueError(f"expected block kind res, fmb or mb, got '{kind}'")


class EfficientViTLargeBackbone(nn.Module):
    """Bx3xSxS normalised image -> one feature map per stage, stage i of shape
    Bx`widths[i]`x(S/2^(i+1))x(S/2^(i+1)), float32."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        stem = [ConvNormAct(3, cfg.widths[0], 3, stride=2, act=True)]
        stem += [
            Residual(_local_block(cfg.blocks[0], cfg.widths[0], cfg.widths[0], 1,
                                  cfg.expands[0], cfg.light[0]))
            for _ in range(cfg.depths[0])
        ]
        stages = [OpList(stem)]
        for i in range(1, len(cfg.widths)):
            cin, cout, kind = cfg.widths[i - 1], cfg.widths[i], cfg.blocks[i]
            attention = kind.startswith("att")
            # The strided first block: an MBConv in attention stages, x4 expansion
            first = _local_block("mb" if attention else kind, cin, cout, 2,
                                 cfg.expands[i] * 4, cfg.light[i])
            ops: list[nn.Module] = [Residual(first, skip=False)]
            for _ in range(cfg.depths[i]):
                if attention:
                    scales = (3,) if kind == "att@3" else (5,)
                    ops.append(EfficientViTBlock(cout, cfg.head_dim, cfg.expands[i], scales))
                else:
                    ops.append(Residual(_local_block(kind, cout, cout, 1, cfg.expands[i],
                                                     cfg.light[i])))
            stages.append(OpList(ops))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class SamNeck(nn.Module):
    """Stage features -> Bx`out_dim`x`grid`x`grid` (before the final LayerNorm; 64x64 in
    every EfficientViT-SAM).

    Each stage in `stage_ids` goes through 1x1 conv + BatchNorm to `width` channels and a
    bicubic resize to `grid` x `grid`; the maps are summed, refined by `depth` residual
    FusedMBConv blocks and projected by a 1x1 conv with bias.
    """

    def __init__(
        self,
        stage_ids: tuple[int, ...],
        in_channels: tuple[int, ...],
        width: int,
        depth: int,
        expand_ratio: float,
        out_dim: int = EMBED_DIM,
        grid: int = EMBED_GRID,
    ) -> None:
        super().__init__()
        self.stage_ids = stage_ids
        self.input_ops = nn.ModuleList(
            OpList([ConvNormAct(c, width, 1), ResizeTo(grid)]) for c in in_channels
        )
        self.middle = OpList(
            [Residual(FusedMBConv(width, width, expand_ratio)) for _ in range(depth)]
        )
        self.output_ops = nn.ModuleList(
            [OpList([ConvNormAct(width, out_dim, 1, bias=True, norm=False)])]
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        maps = [op(features[i]) for i, op in zip(self.stage_ids, self.input_ops, strict=True)]
        # Sum as the official model does: a + (b + c)
        x = maps[-1]
        for m in reversed(maps[:-1]):
            x = m + x
        return self.output_ops[0](self.middle(x))


class EfficientViTSamEncoder(nn.Module):
    """Bx3x`img_size`x`img_size` normalised, zero-padded float image -> Bx256x64x64 float32
    embedding (backbone, neck, channel LayerNorm)."""

    def __init__(self, backbone: EfficientViTLargeBackbone, neck: SamNeck, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size  # read by `Sam` as the encoder's input square
        self.backbone = backbone
        self.neck = neck
        self.norm = LayerNorm2d(EMBED_DIM, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.neck(self.backbone(x)))


# -- builders -----------------------------------------------------------------------------------

_L_BLOCKS = ("res", "fmb", "fmb", "mb", "att")
_L_EXPANDS = (1, 4, 4, 4, 6)
_L_LIGHT = (False, False, False, True, True)
_XL_BLOCKS = ("res", "fmb", "fmb", "fmb", "att@3", "att@3")
_XL_EXPANDS = (1, 4, 4, 4, 4, 6)
_XL_LIGHT = (False, False, False, False, True, True)


def _build(
    backbone: BackboneConfig,
    neck_stages: tuple[int, ...],
    neck_depth: int,
    neck_expand: float,
    image_size: int,
) -> Sam:
    neck = SamNeck(
        stage_ids=neck_stages,
        in_channels=tuple(backbone.widths[i] for i in neck_stages),
        width=256,
        depth=neck_depth,
        expand_ratio=neck_expand,
    )
    encoder = EfficientViTSamEncoder(EfficientViTLargeBackbone(backbone), neck, image_size)
    model = build_sam(
        encoder,
        prompt_embed_dim=EMBED_DIM,
        image_size=PROMPT_FRAME,
        layer_norm_eps=NORM_EPS,
        layer_norm2d_eps=NORM_EPS,
    )
    model.checkpoint_wrappers = ("state_dict",)  # the trainer's files wrap the state dict
    return model


def l_backbone_config(depths: tuple[int, ...],
                      widths: tuple[int, ...] = (32, 64, 128, 256, 512),
                      head_dim: int = 32) -> BackboneConfig:
    """An EfficientViT-L backbone of these depths (and widths): the L models' block kinds,
    expansions and norms per stage (res, fmb, fmb, mb, att)."""
    return BackboneConfig(widths, depths, _L_BLOCKS, _L_EXPANDS, _L_LIGHT, head_dim)


L_NECK_STAGES = (4, 3, 2)  # the stages the L models' neck fuses (strides 32, 16, 8)


def _build_l(depths: tuple[int, ...], neck_depth: int) -> Sam:
    return _build(l_backbone_config(depths), L_NECK_STAGES, neck_depth, neck_expand=1,
                  image_size=512)


def _build_xl(depths: tuple[int, ...], neck_depth: int) -> Sam:
    cfg = BackboneConfig((32, 64, 128, 256, 512, 1024), depths, _XL_BLOCKS, _XL_EXPANDS,
                         _XL_LIGHT)
    return _build(cfg, (5, 4, 3), neck_depth, neck_expand=4, image_size=1024)


def build_efficientvit_sam_l0() -> Sam:
    """EfficientViT-SAM-L0 (34.8M parameters), encoder at 512; efficientvit_sam_l0.pt."""
    return _build_l((1, 1, 1, 4, 4), neck_depth=4)


def build_efficientvit_sam_l1() -> Sam:
    """EfficientViT-SAM-L1 (47.7M parameters), encoder at 512; efficientvit_sam_l1.pt."""
    return _build_l((1, 1, 1, 6, 6), neck_depth=8)


def build_efficientvit_sam_l2() -> Sam:
    """EfficientViT-SAM-L2 (61.3M parameters), encoder at 512; efficientvit_sam_l2.pt."""
    return _build_l((1, 2, 2, 8, 8), neck_depth=12)


def build_efficientvit_sam_xl0() -> Sam:
    """EfficientViT-SAM-XL0 (117.0M parameters), encoder at 1024; efficientvit_sam_xl0.pt."""
    return _build_xl((0, 1, 1, 2, 3, 3), neck_depth=6)


def build_efficientvit_sam_xl1() -> Sam:
    """EfficientViT-SAM-XL1 (203.3M parameters), encoder at 1024; efficientvit_sam_xl1.pt."""
    return _build_xl((1, 2, 2, 4, 6, 6), neck_depth=12)


BUILDERS = {
    "efficientvit_sam_l0": build_efficientvit_sam_l0,
    "efficientvit_sam_l1": build_efficientvit_sam_l1,
    "efficientvit_sam_l2": build_efficientvit_sam_l2,
    "efficientvit_sam_xl0": build_efficientvit_sam_xl0,
    "efficientvit_sam_xl1": build_efficientvit_sam_xl1,
}

# Official checkpoint file names (mit-han-lab/efficientvit model zoo).
OFFICIAL_FILES = {name: f"{name}.pt" for name in BUILDERS}
