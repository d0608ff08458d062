"""Registry builders of SAM 3: the official image model (`sam3`, file `sam3.pt`) and a reduced
configuration of the same design for tests and CPU demos (`sam3_tiny_test`).

Each builder passes literal sizes to `_build_sam3`, which composes the parts as the official
`build_sam3_image_model` does, the vision neck with its SAM 2 branch (the released file's
detector part holds it: 1,156 keys)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .attention import MLP, MultiheadAttention
from .decoder import build_detector_transformer
from .fusion import FusionEncoderLayer
from .geometry import SequenceGeometryEncoder
from .model import Sam3, VisionLanguageBackbone
from .neck import Sam3DualViTDetNeck
from .position import PositionEmbeddingSine
from .scoring import build_dot_product_scoring
from .segmentation import MaskPredictor, PixelDecoder, UniversalSegmentationHead
from .text import TextEncoder
from .vit import ViT


def _build_sam3(*, image_size: int, patch_size: int, vit_dim: int, vit_depth: int,
                vit_heads: int, window_size: int, global_blocks: tuple[int, ...],
                pretrain_size: int, **parts: int) -> Sam3:
    trunk = ViT(img_size=image_size, patch_size=patch_size, embed_dim=vit_dim, depth=vit_depth,
                num_heads=vit_heads, mlp_ratio=4.625, window_size=window_size,
                global_att_blocks=global_blocks, pretrain_img_size=pretrain_size,
                use_interp_rope=True, pretrain_use_cls_token=True, qkv_bias=True,
                bias_patch_embed=False)
    return sam3_with_trunk(trunk, image_size=image_size, **parts)


def sam3_with_trunk(trunk: nn.Module, *, image_size: int, text_width: int, text_heads: int,
                    text_layers: int, vocab_size: int, d_model: int, heads: int, ffn: int,
                    encoder_layers: int, decoder_layers: int, queries: int,
                    geometry_layers: int, scoring_hidden: int) -> Sam3:
    """SAM 3's image model around a vision `trunk` (normalised Bx3xSxS -> [BxCxHxW], with
    `channel_list` [C] and `grid` (H, W)): the ViT, or a student's (models/sam3/student.py)."""
    neck = Sam3DualViTDetNeck(trunk, PositionEmbeddingSine(d_model, normalize=True), d_model,
                              scale_factors=(4.0, 2.0, 1.0, 0.5), add_sam2_neck=True)
    text = TextEncoder(None, d_model=d_model, width=text_width, heads=text_heads,
                       layers=text_layers, context_length=32, vocab_size=vocab_size)
    backbone = VisionLanguageBackbone(neck, text, scalp=1)
    transformer = build_detector_transformer(
        d_model=d_model, num_heads=heads, dim_feedforward=ffn,
        num_encoder_layers=encoder_layers, num_decoder_layers=decoder_layers,
        num_queries=queries)
    geometry_layer = FusionEncoderLayer(d_model, heads, ffn, activation="relu",
                                        pos_enc_at_attn=False,
                                        pos_enc_at_cross_attn_queries=False,
                                        pos_enc_at_cross_attn_keys=True, batch_first=False)
    geometry = SequenceGeometryEncoder(d_model, PositionEmbeddingSine(d_model, normalize=True),
                                       geometry_layer, geometry_layers, roi_size=7)
    segmentation = UniversalSegmentationHead(
        d_model, PixelDecoder(d_model, 3),
        MaskPredictor(MLP(d_model, d_model, d_model, 3)),
        MultiheadAttention(d_model, heads))
    scoring = build_dot_product_scoring(d_model, d_model, scoring_hidden)
    return Sam3(backbone, transformer, geometry, segmentation, scoring, image_size=image_size)


def build_sam3() -> Sam3:
    """SAM 3's image model (848M parameters in the detector part of the official file; file
    sam3.pt): ViT-L-like trunk of width 1024, 32 blocks, 16 heads, 24x24 windows and global
    blocks 7, 15, 23, 31 at 1008 px (72x72 tokens); text encoder of width 1024, 24 layers;
    d_model 256: 6 fusion layers, 6 decoder layers of 200 queries, 3 geometry layers."""
    return _build_sam3(image_size=1008, patch_size=14, vit_dim=1024, vit_depth=32,
                       vit_heads=16, window_size=24, global_blocks=(7, 15, 23, 31),
                       pretrain_size=336, text_width=1024, text_heads=16, text_layers=24,
                       vocab_size=49408, d_model=256, heads=8, ffn=2048, encoder_layers=6,
                       decoder_layers=6, queries=200, geometry_layers=3, scoring_hidden=2048)


def build_sam3_tiny_test() -> Sam3:
    """SAM 3's design at toy sizes for tests and CPU demos: 168 px (12x12 tokens, windows of 8
    padded to 16, global blocks 1 and 3 of 4), width 64; a 2-layer text encoder of width 64
    over a 1024-token table (room for a test vocabulary: 514 symbols and 300 merges); d_model
    32: 2 fusion, 2 decoder (20 queries), 1 geometry layer; 48x48 mask logits."""
    return _build_sam3(image_size=168, patch_size=14, vit_dim=64, vit_depth=4, vit_heads=4,
                       window_size=8, global_blocks=(1, 3), pretrain_size=112, text_width=64,
                       text_heads=4, text_layers=2, vocab_size=1024, d_model=32, heads=4,
                       ffn=64, encoder_layers=2, decoder_layers=2, queries=20,
                       geometry_layers=1, scoring_hidden=64)


BUILDERS: dict[str, Callable[[], Sam3]] = {"sam3": build_sam3,
                                            "sam3_tiny_test": build_sam3_tiny_test}
OFFICIAL_FILES = {"sam3": "sam3.pt"}
