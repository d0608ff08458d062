"""Students of SAM 2.1: MobileSAM's TinyViT encoder behind SAM 2.1's prompt encoder and mask
decoder (`mobile_sam2`; `mobile_sam2_tiny_test`, the student of `sam2_tiny_test`).

A SAM 2 decoder takes three maps of the image, not one: the stride-16 embedding and the
stride-4 / stride-8 maps that its `conv_s0` / `conv_s1` turn into the high-res features. So the
student's encoder gives all three (`TinyVitSam2Encoder`, normalised Bx3xSxS ->
[Bxdx(S/4)^2, Bxdx(S/8)^2, Bxdx(S/16)^2], d = 256 at full size):
- stride 16: TinyViT with its SAM neck (as in `mobile_sam`), the 256x64x64 embedding once
  `Sam2` adds the teacher's `no_mem_embed`;
- stride 4 and 8: 1x1 convolutions (`high_res_s4`, `high_res_s8`) of TinyViT's stage-0 maps
  before and after its first patch merge (64x256x256 and 128x128x128 at full size) to d
  channels, where Hiera's FPN neck has its stride-4 and stride-8 outputs.

Everything else is `Sam2`'s: the image stretched to SxS (no aspect kept, as the teacher, so
the grids of teacher and student cover the same pixels), ImageNet mean/std, prompts in the
SxS frame, the decoder with high-res features. Stage 1 of `samdata distill` trains the
encoder on the teacher embedding, and on the teacher's high-res maps when the corpus holds
them (`samdata embed` with output.high_res); the heads are the teacher's, copied.

File layout (no official file exists; samdata's own, in SAM 2.1's format): `{"model": sd}`
with `image_encoder.*` (TinyViT's keys exactly as in `mobile_sam.pt`'s `image_encoder.*`,
ImageNet head included, plus `image_encoder.high_res_s4.*`, `image_encoder.high_res_s8.*`),
`sam_prompt_encoder.*`, `sam_mask_decoder.*` and `no_mem_embed` with the names and shapes of
the SAM 2.1 files, which `build_model` loads with weights_only=True and a strict key match.
"""

from __future__ import annotations

import torch
from torch import nn

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


STUDENT_BUILDERS = {"mobile_sam2": build_mobile_sam2,
                    "mobile_sam2_tiny_test": build_mobile_sam2_tiny_test}
