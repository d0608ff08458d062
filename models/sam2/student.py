"""Students of SAM 2.1: a compact encoder behind SAM 2.1's prompt encoder and mask decoder.

- `mobile_sam2` (`mobile_sam2_tiny_test`, the student of `sam2_tiny_test`): MobileSAM's TinyViT;
- `efficientvit_sam2_l0` (`efficientvit_sam2_tiny_test`): EfficientViT-SAM-L0's backbone and
  neck, run at half the input size as EfficientViT-SAM-L runs (512 for a 1024 frame).

A SAM 2 decoder takes three maps of the image, not one: the stride-16 embedding and the
stride-4 / stride-8 maps that its `conv_s0` / `conv_s1` turn into the high-res features. So a
student's encoder gives all three (normalised Bx3xSxS -> [Bxdx(S/4)^2, Bxdx(S/8)^2,
Bxdx(S/16)^2], float32, d = 256 at full size), in the order of Hiera's FPN outputs:
- `TinyVitSam2Encoder`: stride 16 is TinyViT with its SAM neck (as in `mobile_sam`), the
  256x64x64 embedding once `Sam2` adds the teacher's `no_mem_embed`; strides 4 and 8 are 1x1
  convolutions (`high_res_s4`, `high_res_s8`) of TinyViT's stage-0 maps before and after its
  first patch merge (64x256x256 and 128x128x128 at full size) to d channels, where Hiera's FPN
  neck has its stride-4 and stride-8 outputs.
- `EfficientViTSam2Encoder`: the SxS input resized to S/2 (bilinear, antialiased); stride 16
  (of S) is EfficientViT-SAM's neck over backbone stages 2-4 and its channel LayerNorm, as in
  `efficientvit_sam_l0`; strides 4 and 8 are 1x1 convolutions of the backbone's stage-0 and
  stage-1 maps (32x256x256 and 64x128x128 at full size: strides 2 and 4 of the half-size input).

Everything else is `Sam2`'s: the image stretched to SxS (no aspect kept, as the teacher, so
the grids of teacher and student cover the same pixels), ImageNet mean/std, prompts in the
SxS frame, the decoder with high-res features. Stage 1 of `samdata distill` trains the
encoder on the teacher embedding, and on the teacher's high-res maps when the corpus holds
them (`samdata embed` with output.high_res); the heads are the teacher's, copied. Stage 2
trains encoder and decoder with the decoder in the loop.

File layout (no official file exists; samdata's own, in SAM 2.1's format): `{"model": sd}`
with `image_encoder.*` (TinyViT's keys exactly as in `mobile_sam.pt`'s `image_encoder.*`,
ImageNet head included, or EfficientViT-SAM-L0's exactly as in `efficientvit_sam_l0.pt`'s,
plus `image_encoder.high_res_s4.*`, `image_encoder.high_res_s8.*`), `sam_prompt_encoder.*`,
`sam_mask_decoder.*` and `no_mem_embed` with the names and shapes of the SAM 2.1 files, which
`build_model` loads with weights_only=True and a strict key match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from ..efficientvit import (
    L_NECK_STAGES,
    NORM_EPS,
    BackboneConfig,
    EfficientViTLargeBackbone,
    SamNeck,
    l_backbone_config,
)
from ..tiny_vit import TinyViT
from .builders import sam2_with_encoder
from .model import Sam2


class TinyVitSam2Encoder(TinyViT):
    """TinyViT with SAM's neck, also giving its stride-4 and stride-8 maps projected to the
    neck's width: normalised Bx3xSxS -> [Bxdx(S/4)^2, Bxdx(S/8)^2, Bxdx(S/16)^2] (d =
    out_chans), the order of Hiera's FPN outputs that `Sam2` takes."""

    def __init__(self, **tiny_vit: object) -> None:
        super().__init__(**tiny_vit)
        dims = tiny_vit.get("embed_dims", (64, 128, 160, 320))
        width = self.neck[0].out_channels
        self.high_res_s4 = nn.Conv2d(dims[0], width, kernel_size=1)
        self.high_res_s8 = nn.Conv2d(dims[1], width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)  # (B, C0, S/4, S/4)
        stage0 = self.layers[0]
        for block in stage0.blocks:
            x = block(x)
        s4 = x
        x = stage0.downsample(x)  # (B, C1, S/8, S/8)
        s8 = x
        for stage in self.layers[1:]:
            x = stage(x)  # ... -> (B, C_last, S/16, S/16)
        return [self.high_res_s4(s4), self.high_res_s8(s8), self.neck(x)]


def _build(image_size: int, embed_dims: tuple[int, ...], depths: tuple[int, ...],
           num_heads: tuple[int, ...], window_sizes: tuple[int, ...], d_model: int,
           num_classes: int) -> Sam2:
    encoder = TinyVitSam2Encoder(img_size=image_size, embed_dims=embed_dims, depths=depths,
                                 num_heads=num_heads, window_sizes=window_sizes,
                                 merge_strides=(2, 2, 1), out_chans=d_model,
                                 num_classes=num_classes)
    return sam2_with_encoder(encoder, image_size, d_model)


def build_mobile_sam2() -> Sam2:
    """TinyViT-5M (MobileSAM's encoder, 1024 input) + SAM 2.1's heads: the student of any
    SAM 2.1 size (their prompt encoders and mask decoders have the same shapes)."""
    return _build(1024, (64, 128, 160, 320), (2, 2, 6, 2), (2, 4, 5, 10), (7, 7, 14, 7),
                  d_model=256, num_classes=1000)


def build_mobile_sam2_tiny_test() -> Sam2:
    """The student of `sam2_tiny_test` in tests: a 256 input, 64 -> 32 -> 16 -> 16 tokens a
    side (as `mobile_sam_demo`), its 64x16x16 embedding, high-res maps 8x64x64 and 16x32x32."""
    return _build(256, (16, 32, 48, 64), (1, 1, 2, 1), (1, 2, 3, 4), (7, 7, 8, 8),
                  d_model=64, num_classes=16)


class EfficientViTSam2Encoder(nn.Module):
    """EfficientViT-SAM's encoder at half the input size, also giving its stride-2 and
    stride-4 maps projected to the neck's width: normalised float Bx3xSxS -> [Bxdx(S/4)^2,
    Bxdx(S/8)^2, Bxdx(S/16)^2] float32 (d = the neck's out_dim), the order of Hiera's FPN
    outputs that `Sam2` takes. `backbone`, `neck` and `norm` have EfficientViT-SAM's names."""

    def __init__(self, backbone: BackboneConfig, neck_stages: tuple[int, ...],
                 neck_width: int, neck_depth: int, image_size: int, d_model: int) -> None:
        super().__init__()
        self.img_size = image_size // 2  # the backbone's input square
        self.backbone = EfficientViTLargeBackbone(backbone)
        self.neck = SamNeck(neck_stages, tuple(backbone.widths[i] for i in neck_stages),
                            neck_width, neck_depth, expand_ratio=1, out_dim=d_model,
                            grid=image_size // 16)
        self.norm = LayerNorm2d(d_model, eps=NORM_EPS)
        self.high_res_s4 = nn.Conv2d(backbone.widths[0], d_model, kernel_size=1)
        self.high_res_s8 = nn.Conv2d(backbone.widths[1], d_model, kernel_size=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = self.img_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False,
                              antialias=True)  # (B, 3, S/2, S/2)
        stages = self.backbone(x)  # stage i: (B, widths[i], S/2^(i+2), S/2^(i+2))
        embed = self.norm(self.neck(stages))  # (B, d, S/16, S/16)
        return [self.high_res_s4(stages[0]), self.high_res_s8(stages[1]), embed]


def _build_efficientvit(image_size: int, backbone: BackboneConfig, neck_width: int,
                        neck_depth: int, d_model: int) -> Sam2:
    encoder = EfficientViTSam2Encoder(backbone, L_NECK_STAGES, neck_width, neck_depth,
                                      image_size, d_model)
    return sam2_with_encoder(encoder, image_size, d_model)


def build_efficientvit_sam2_l0() -> Sam2:
    """EfficientViT-SAM-L0's encoder (backbone depths 1-1-1-4-4, neck 256 wide and 4 deep; run
    at 512) + SAM 2.1's heads at 1024: a student of any SAM 2.1 size."""
    return _build_efficientvit(1024, l_backbone_config((1, 1, 1, 4, 4)), neck_width=256,
                               neck_depth=4, d_model=256)


def build_efficientvit_sam2_tiny_test() -> Sam2:
    """The EfficientViT student of `sam2_tiny_test` in tests: a 256 input (backbone at 128,
    widths 8-16-32-48-64, one block a stage, 16-channel attention heads), its 64x16x16
    embedding, high-res maps 8x64x64 and 16x32x32."""
    return _build_efficientvit(256, l_backbone_config((1, 1, 1, 1, 1), (8, 16, 32, 48, 64),
                                                      head_dim=16),
                               neck_width=32, neck_depth=1, d_model=64)


STUDENT_BUILDERS = {"mobile_sam2": build_mobile_sam2,
                    "mobile_sam2_tiny_test": build_mobile_sam2_tiny_test,
                    "efficientvit_sam2_l0": build_efficientvit_sam2_l0,
                    "efficientvit_sam2_tiny_test": build_efficientvit_sam2_tiny_test}
