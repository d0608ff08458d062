"""Students of SAM 3: a compact vision trunk in place of SAM 3's ViT, everything else SAM 3's.

SAM 3's vision side is one map, the ViT trunk's output (1024x72x72 at 1008 px, stride 14),
from which its dual ViTDet neck makes every FPN level (288^2, 144^2, 72^2) that the fusion
encoder, the decoder and the segmentation head read. A student that gives that map in that
shape takes the neck, the text encoder and the detector unchanged: stage 1 of `samdata
distill` trains the trunk alone on the teacher's trunk map (`Sam3.embed_trunk`, stored by
`samdata embed`), as EfficientSAM3's stage 1 does, and the result labels concepts as SAM 3
does (`samdata autolabel` with prompts.concepts).

- `mobile_sam3`: MobileSAM's TinyViT-5M with its SAM neck (keys as `mobile_sam.pt`'s
  `image_encoder.*`, so that file's encoder can start it), run on the 1008 px input (a 63x63
  grid at stride 16), then `project`: a 1x1 convolution to the teacher's 1024 channels,
  LayerNorm2d, GELU, a 3x3 convolution; resized (bilinear) to the teacher's 72x72 grid.
  EfficientSAM3's head is this with BatchNorm; LayerNorm2d here does not depend on the
  per-worker batch (4-8 images of 1008 px).
- `mobile_sam3_tiny_test`: the student of `sam3_tiny_test` in tests (64x12x12 map).

The input is SAM 3's: stretched to SxS, (x / 255 - 0.5) / 0.5 (`Sam3.normalize`).

File layout (no official file exists; samdata's own, in sam3.pt's wrapping): `{"model": sd}`
with `backbone.vision_backbone.trunk.*` the student's trunk and every other key with the name
and shape of the teacher's `detector.*` part (without the prefix), which `build_model` loads
with weights_only=True and a strict key match.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from ..tiny_vit import NECK_EPS, TinyViT
from .builders import sam3_with_trunk
from .model import Sam3


class TinyVitSam3Trunk(TinyViT):
    """TinyViT with SAM's neck, projected to a SAM 3 trunk's map: normalised float Bx3xSxS ->
    [Bx`out_dim`x`grid`x`grid`] float32 (a list of one map, as the ViT gives), `channel_list`
    [out_dim] and `grid` (grid, grid) as the ViT has them for the neck."""

    def __init__(self, out_dim: int, grid: int, **tiny_vit: object) -> None:
        super().__init__(**tiny_vit)
        width = self.neck[0].out_channels
        self.project = nn.Sequential(
            nn.Conv2d(width, out_dim, kernel_size=1, bias=False),
            LayerNorm2d(out_dim, eps=NECK_EPS),
            nn.GELU(),
            nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1),
        )
        self.channel_list = [out_dim]
        self.grid = (grid, grid)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.project(super().forward(x))  # (B, out_dim, ~S/16, ~S/16)
        if tuple(x.shape[-2:]) != self.grid:
            x = F.interpolate(x, self.grid, mode="bilinear", align_corners=False)
        return [x]  # (B, out_dim, grid, grid)


def build_mobile_sam3() -> Sam3:
    """TinyViT-5M (MobileSAM's encoder) at 1008 px projected to 1024x72x72 (15.8M parameters
    in the trunk) + SAM 3's neck, text encoder and detector (the sizes of `build_sam3`): the
    student of `sam3`."""
    trunk = TinyVitSam3Trunk(out_dim=1024, grid=72, img_size=1008,
                             embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                             num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7),
                             merge_strides=(2, 2, 1), out_chans=256, num_classes=1000)
    return sam3_with_trunk(trunk, image_size=1008, text_width=1024, text_heads=16,
                           text_layers=24, vocab_size=49408, d_model=256, heads=8, ffn=2048,
                           encoder_layers=6, decoder_layers=6, queries=200, geometry_layers=3,
                           scoring_hidden=2048)


def build_mobile_sam3_tiny_test() -> Sam3:
    """The student of `sam3_tiny_test` in tests: a 168 px input (42 -> 21 -> 11 -> 11 tokens a
    side), a 32-channel neck projected to 64x12x12; the rest at `build_sam3_tiny_test`'s
    sizes."""
    trunk = TinyVitSam3Trunk(out_dim=64, grid=12, img_size=168, embed_dims=(16, 32, 48, 64),
                             depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                             window_sizes=(7, 7, 8, 8), merge_strides=(2, 2, 1), out_chans=32,
                             num_classes=16)
    return sam3_with_trunk(trunk, image_size=168, text_width=64, text_heads=4, text_layers=2,
                           vocab_size=1024, d_model=32, heads=4, ffn=64, encoder_layers=2,
                           decoder_layers=2, queries=20, geometry_layers=1, scoring_hidden=64)


STUDENT_BUILDERS: dict[str, Callable[[], Sam3]] = {
    "mobile_sam3": build_mobile_sam3, "mobile_sam3_tiny_test": build_mobile_sam3_tiny_test}
