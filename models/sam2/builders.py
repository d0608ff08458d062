"""SAM 2.1 builders: the four official sizes (sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml)
and a reduced test configuration, each passing literal sizes to `_build`.

What every official size shares (the configs and `SAM2Base`): 1024 input, backbone stride 16
(64x64 embedding), neck width 256 with top-down paths on its two coarsest levels (nearest
upsampling) and the stride-32 level dropped; prompt encoder 256 wide (mask_in_chans 16); mask
decoder: two two-way blocks (8 heads, MLP 2048), IoU head 3 layers of 256 with a sigmoid,
object-score MLP, high-res features, dynamic single mask (delta 0.05, threshold 0.98).
"""

from __future__ import annotations

from torch import nn

from .decoder import Sam2MaskDecoder, Sam2PromptEncoder, Sam2TwoWayTransformer
from .hiera import Hiera
from .model import Sam2
from .neck import FpnNeck, ImageEncoder

BACKBONE_STRIDE = 16
DECODER_MLP_DIM = 2048
DECODER_HEADS = 8
IOU_HEAD_HIDDEN_DIM = 256
MASK_IN_CHANS = 16


def _build(
    embed_dim: int,
    num_heads: int,
    stages: tuple[int, ...],
    global_att_blocks: tuple[int, ...],
    window_spec: tuple[int, ...] = (8, 4, 14, 7),
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
    image_size: int = 1024,
    d_model: int = 256,
) -> Sam2:
    """A SAM 2.1 image model with a Hiera trunk of these sizes (widths double per stage)."""
    trunk = Hiera(embed_dim=embed_dim, num_heads=num_heads, stages=stages,
                  global_att_blocks=global_att_blocks, window_spec=window_spec,
                  window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size)
    return sam2_with_encoder(ImageEncoder(trunk, FpnNeck(d_model, trunk.channel_list)),
                             image_size, d_model)


def sam2_with_encoder(image_encoder: nn.Module, image_size: int, d_model: int) -> Sam2:
    """A `Sam2` around `image_encoder` (normalised Bx3xSxS -> [s4, s8, s16] maps of d_model
    channels at strides 4, 8, 16) with SAM 2.1's prompt encoder and mask decoder at d_model:
    the teachers' heads, and those of their students (models/sam2/student.py)."""
    grid = image_size // BACKBONE_STRIDE
    return Sam2(
        image_encoder=image_encoder,
        sam_prompt_encoder=Sam2PromptEncoder(
            embed_dim=d_model,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=MASK_IN_CHANS,
        ),
        sam_mask_decoder=Sam2MaskDecoder(
            transformer_dim=d_model,
            transformer=Sam2TwoWayTransformer(depth=2, embedding_dim=d_model,
                                              num_heads=DECODER_HEADS, mlp_dim=DECODER_MLP_DIM),
            iou_head_hidden_dim=IOU_HEAD_HIDDEN_DIM,
        ),
        image_size=image_size,
    )


def build_sam2_1_hiera_t() -> Sam2:
    """SAM 2.1 Hiera-T (38.9M parameters in the official file, 31.4M of them the image path),
    official file sam2.1_hiera_tiny.pt."""
    return _build(96, 1, (1, 2, 7, 2), (5, 7, 9), window_pos_embed_bkg_spatial_size=(7, 7))


def build_sam2_1_hiera_s() -> Sam2:
    """SAM 2.1 Hiera-S (46.0M; image path 38.5M), official file sam2.1_hiera_small.pt."""
    return _build(96, 1, (1, 2, 11, 2), (7, 10, 13), window_pos_embed_bkg_spatial_size=(7, 7))


def build_sam2_1_hiera_b_plus() -> Sam2:
    """SAM 2.1 Hiera-B+ (80.8M; image path 73.3M), official file sam2.1_hiera_base_plus.pt.
    Hiera's defaults: stages 2-3-16-3, global blocks 12, 16, 20, 14x14 background table."""
    return _build(112, 2, (2, 3, 16, 3), (12, 16, 20))


def build_sam2_1_hiera_l() -> Sam2:
    """SAM 2.1 Hiera-L (224.4M; image path 216.9M), official file sam2.1_hiera_large.pt."""
    return _build(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8),
                  window_pos_embed_bkg_spatial_size=(7, 7))


def build_sam2_tiny_test() -> Sam2:
    """SAM 2.1 of the official design at toy sizes for tests on a CPU: 256x256 input, a Hiera
    of width 16 (stages 1-2-3-2, one global block; 14x14 and 7x7 windows that pad), a 64-wide
    neck, prompt encoder and decoder (64x16x16 embedding, 64x64 low-res masks). The decoder's
    MLP, heads and IoU head keep SAM2Base's fixed sizes, so the official code builds it too
    (tests/golden/make_sam2_official.py `TINY_TEST_OVERRIDES`)."""
    return _build(16, 1, (1, 2, 3, 2), (5,), window_pos_embed_bkg_spatial_size=(7, 7),
                  image_size=256, d_model=64)


BUILDERS = {
    "sam2_1_hiera_t": build_sam2_1_hiera_t,
    "sam2_1_hiera_s": build_sam2_1_hiera_s,
    "sam2_1_hiera_b_plus": build_sam2_1_hiera_b_plus,
    "sam2_1_hiera_l": build_sam2_1_hiera_l,
    "sam2_tiny_test": build_sam2_tiny_test,
}

# Official checkpoint file names (facebookresearch/sam2, checkpoints/download_ckpts.sh).
OFFICIAL_FILES = {
    "sam2_1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2_1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2_1_hiera_b_plus": "sam2.1_hiera_base_plus.pt",
    "sam2_1_hiera_l": "sam2.1_hiera_large.pt",
}
