"""The SAM 3 dual ViTDet neck: the ViT's single feature map -> a four-level pyramid, twice.

Each level (a "simple FPN", ViTDet style) rescales the trunk's stride-p map by its scale factor
(4: two 2x2 stride-2 transposed convolutions halving the channels each, GELU between; 2: one;
1: nothing; 0.5: 2x2 max-pooling), then a 1x1 and a 3x3 convolution to `d_model` channels. Each
level also gets its sine position encoding. With `add_sam2_neck` a second set of levels of the
same shape but its own weights (`sam2_convs`) makes the features the SAM 2 style interactive
predictor uses; the official video checkpoint holds them (its detector is built so).

Names equal the official `sam3.model.necks.Sam3DualViTDetNeck` (`trunk`, `convs.i.<layer>`,
`sam2_convs.i.<layer>`), so its state dict keys load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .position import PositionEmbeddingSine
from .vit import ViT


def pyramid_level(dim: int, d_model: int, scale: float) -> nn.Sequential:
    """One level: BxdimxHxW -> Bxd_modelx(scale*H)x(scale*W), scale in {4, 2, 1, 0.5}."""
    level = nn.Sequential()
    if scale == 4.0:
        level.add_module("dconv_2x2_0", nn.ConvTranspose2d(dim, dim // 2, 2, stride=2))
        level.add_module("gelu", nn.GELU())
        level.add_module("dconv_2x2_1", nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2))
        out_dim = dim // 4
    elif scale == 2.0:
        level.add_module("dconv_2x2", nn.ConvTranspose2d(dim, dim // 2, 2, stride=2))
        out_dim = dim // 2
    elif scale == 1.0:
        out_dim = dim
    elif scale == 0.5:
        level.add_module("maxpool_2x2", nn.MaxPool2d(kernel_size=2, stride=2))
        out_dim = dim
    else:
        raise ValueError(f"expected a scale factor among 4, 2, 1, 0.5, got {scale}")
    level.add_module("conv_1x1", nn.Conv2d(out_dim, d_model, kernel_size=1))
    level.add_module("conv_3x3", nn.Conv2d(d_model, d_model, kernel_size=3, padding=1))
    return level


class Sam3DualViTDetNeck(nn.Module):
    """Trunk + pyramid: normalised Bx3xSxS float32 image -> (sam3_out, sam3_pos, sam2_out,
    sam2_pos). sam3_out: one Bxd_modelx(s*S/p)x(s*S/p) float32 map per scale factor s, in the
    order of `scale_factors` (SAM 3 at 1008 px: 288^2, 144^2, 72^2, 36^2); sam3_pos: their
    Bxd_modelxhxw position encodings in the maps' dtype; sam2_out / sam2_pos: the same from
    `sam2_convs`, or None without `add_sam2_neck`."""

    def __init__(self, trunk: ViT, position_encoding: PositionEmbeddingSine, d_model: int,
                 scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
                 add_sam2_neck: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.position_encoding = position_encoding
        self.scale_factors = tuple(scale_factors)
        dim = trunk.channel_list[-1]
        self.convs = nn.ModuleList(pyramid_level(dim, d_model, s) for s in self.scale_factors)
        self.sam2_convs = (
            nn.ModuleList(pyramid_level(dim, d_model, s) for s in self.scale_factors)
            if add_sam2_neck else None)

    def _pyramid(self, convs: nn.ModuleList,
                 x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        maps = [level(x) for level in convs]
        return maps, [self.position_encoding(m).to(m.dtype) for m in maps]

    def forward(self, tensor_list: torch.Tensor, with_sam2: bool = True) -> tuple[
            list[torch.Tensor], list[torch.Tensor],
            list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """with_sam2 False: the SAM 2 branch is not computed (None, None), as without it:
        concept detection never reads it, and its 4x level costs as much as the main one's."""
        x = self.trunk(tensor_list)[-1]  # (B, C, S/p, S/p)
        sam3_out, sam3_pos = self._pyramid(self.convs, x)
        sam2_out = sam2_pos = None
        if self.sam2_convs is not None and with_sam2:
            sam2_out, sam2_pos = self._pyramid(self.sam2_convs, x)
        return sam3_out, sam3_pos, sam2_out, sam2_pos


def build_sam3_vision(add_sam2_neck: bool = True) -> Sam3DualViTDetNeck:
    """The full-size SAM 3 vision backbone (official `_create_vision_backbone`): ViT at 1008 px
    and the 256-channel dual neck. Weights as nn.Module initialises them (load a checkpoint);
    the RoPE rotations are computed."""
    trunk = ViT(img_size=1008, patch_size=14, embed_dim=1024, depth=32, num_heads=16,
                mlp_ratio=4.625, window_size=24, global_att_blocks=(7, 15, 23, 31),
                pretrain_img_size=336, rope_pt_size=None, use_interp_rope=True,
                pretrain_use_cls_token=True, qkv_bias=True, bias_patch_embed=False)
    position = PositionEmbeddingSine(num_pos_feats=256, temperature=10000, normalize=True)
    return Sam3DualViTDetNeck(trunk, position, d_model=256, scale_factors=(4.0, 2.0, 1.0, 0.5),
                              add_sam2_neck=add_sam2_neck)


def sam3_vision_state_spec(
        add_sam2_neck: bool = True) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of the full-size vision backbone's state dict (keys relative to
    the neck: `trunk.*`, `convs.*`, `sam2_convs.*`; the image model prefixes
    `backbone.vision_backbone.`). Built on the meta device: no memory, no compute."""
    with torch.device("meta"):
        model = build_sam3_vision(add_sam2_neck=add_sam2_neck)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
