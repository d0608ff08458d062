"""`Sam3Interactive`: SAM 3's box and point prompts (the official "SAM 1 task"), a
`HighResPromptableModel` (models/protocols.py) that loads the official `sam3.pt` unchanged.

The official image model built with `build_sam3_image_model(enable_inst_interactivity=True)`
answers one box and/or clicks per mask with `Sam3Image.predict_inst`, after
`Sam3Processor.set_image`. Read from that code (PyPI sam3 0.1.4):
- image: stretched to SxS (S = 1008) as uint8, bilinear antialiased, then / 255 and
  (x - 0.5) / 0.5 (the processor's transforms; the SAM3InteractiveImagePredictor's own
  `set_image` cannot run: the tracker it holds is built without a backbone);
- the vision trunk (the concept model's ViT) -> the SAM 2 branch of the dual neck
  (`sam2_convs`) at scales 4, 2, 1 (the 0.5 level is dropped, scalp=1):
  256x288x288, 256x144x144, 256x72x72; the tracker's `sam_mask_decoder.conv_s0` / `conv_s1`
  project the first two to the high-res features 32x288x288 and 64x144x144; the tracker's
  `no_mem_embed` is added to the last: the image embedding 256x72x72;
- prompts: SAM2Transforms at resolution 1008, coordinates divided by the original (w, h) and
  multiplied by S; a box is two corner points (labels 2, 3) before the clicks;
- heads: the tracker's SAM 2 style prompt encoder and mask decoder (`Sam3TrackerBase.
  _build_sam_heads`: embedding 72x72, mask_in_chans 16, two two-way blocks of 8 heads and MLP
  2048 whose MLPs are SAM 1's `lin1`/`lin2`, IoU head 3x256 with a sigmoid, object-score MLP,
  high-res features, dynamic single mask (delta 0.05, threshold 0.98)); low-res masks 288x288;
- masks: background holes of at most 256 low-res pixels (8-connected components of logits <= 0)
  are filled with logit 10 (the predictor's `max_hole_area=256`), then one bilinear resize to
  the original size; the low-res logits handed back are the unfilled ones.

That is SAM 2.1's image predictor (models/sam2/model.py `Sam2`) on other parts, so this class
is a `Sam2` with SAM 3's image preparation, hole filling and checkpoint layout.

Checkpoint: our keys are `image_encoder.trunk.*`, `image_encoder.sam2_convs.{0,1,2}.*`,
`sam_prompt_encoder.*`, `sam_mask_decoder.*`, `no_mem_embed`; `strip_checkpoint` renames the
file's `detector.backbone.vision_backbone.*` and `tracker.*` keys to them (`FILE_PREFIXES`),
and every other part of the file is declared unused (`UNUSED_PREFIXES`: the detector's text
encoder, SAM 3 neck branch, fusion transformer, geometry encoder, segmentation head and
scoring; the tracker's memory modules and object pointers). Anything else is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sam2.decoder import Sam2MaskDecoder, Sam2PromptEncoder
from ..sam2.model import Sam2
from ..transformer import TwoWayTransformer
from .model import PIXEL_MEAN, PIXEL_STD, Sam3
from .neck import pyramid_level
from .vit import ViT

MAX_HOLE_AREA = 256  # the official SAM3InteractiveImagePredictor's max_hole_area (low-res px)
HOLE_LOGIT = 10.0  # what a filled hole's logits become: mask_threshold + 10, as the official
SAM2_SCALES = (4.0, 2.0, 1.0)  # the SAM 2 branch's levels the predictor reads (0.5 dropped)
# The tracker's SAM heads (`_build_sam_heads`): fixed sizes whatever the width
DECODER_MLP_DIM = 2048
DECODER_HEADS = 8
IOU_HEAD_HIDDEN_DIM = 256
MASK_IN_CHANS = 16

_VISION = "detector.backbone.vision_backbone."
# Official file key prefix -> ours, for the parts this model holds (an entry without a final
# dot is one whole key)
FILE_PREFIXES: tuple[tuple[str, str], ...] = (
    (_VISION + "trunk.", "image_encoder.trunk."),
    *((f"{_VISION}sam2_convs.{i}.", f"image_encoder.sam2_convs.{i}.")
      for i in range(len(SAM2_SCALES))),
    ("tracker.sam_prompt_encoder.", "sam_prompt_encoder."),
    ("tracker.sam_mask_decoder.", "sam_mask_decoder."),
    ("tracker.no_mem_embed", "no_mem_embed"),
)
# Keys of the official file this model does not use (file names, not renamed)
UNUSED_PREFIXES: tuple[str, ...] = (
    "detector.backbone.language_backbone.",  # the text encoder
    _VISION + "convs.",  # the neck's SAM 3 branch (concept detection)
    f"{_VISION}sam2_convs.{len(SAM2_SCALES)}.",  # the SAM 2 branch's 0.5 level (scalp=1)
    "detector.transformer.",  # fusion encoder and DETR-style decoder
    "detector.geometry_encoder.",
    "detector.segmentation_head.",
    "detector.dot_prod_scoring.",
    "tracker.transformer.",  # memory attention
    "tracker.maskmem_backbone.",  # memory encoder
    "tracker.maskmem_tpos_enc",
    "tracker.no_mem_pos_enc",
    "tracker.no_obj_ptr",
    "tracker.no_obj_embed_spatial",
    "tracker.mask_downsample.",
    "tracker.obj_ptr_proj.",
    "tracker.obj_ptr_tpos_proj.",
)


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    for src, dst in pairs:
        if src.endswith(".") and key.startswith(src):
            return dst + key[len(src):]
        if key == src:
            return dst
    return None


def to_file_key(key: str) -> str:
    """Our state-dict key -> the official sam3.pt key it is loaded from."""
    out = _rename(key, tuple((ours, theirs) for theirs, ours in FILE_PREFIXES))
    if out is None:
        raise KeyError(f"expected a key of Sam3Interactive, got '{key}'")
    return out


def fill_holes(logits: torch.Tensor, max_area: int, threshold: float = 0.0) -> torch.Tensor:
    """float BxCxhxw mask logits -> the same with every background component (8-connected
    pixels with logit <= threshold) of at most `max_area` pixels set to threshold + 10, as the
    official predictor's postprocessing (its CPU path: skimage `label`, full connectivity)."""
    from scipy import ndimage  # heavy import, only when masks are postprocessed

    if logits.dim() != 4:
        raise ValueError(f"expected logits BxCxhxw, got {tuple(logits.shape)}")
    background = (logits <= threshold).flatten(0, 1).cpu().numpy()  # (B*C, h, w) bool
    holes = np.zeros_like(background)
    eight = np.ones((3, 3), dtype=bool)
    for i, bg in enumerate(background):
        labels, count = ndimage.label(bg, structure=eight)
        if count == 0:
            continue
        small = np.bincount(labels.ravel()) <= max_area
        small[0] = False  # label 0 is the foreground
        holes[i] = small[labels]
    holes_t = torch.from_numpy(holes).to(logits.device).view(logits.shape)
    return torch.where(holes_t, torch.full_like(logits, threshold + HOLE_LOGIT), logits)


class Sam2Branch(nn.Module):
    """SAM 3's vision trunk + the SAM 2 branch of its dual neck (`sam2_convs`), the image
    encoder of the interactive predictor: normalised float32 Bx3xSxS -> [s4, s8, s16] maps of
    d_model channels, Bxdx(4S/p)^2, Bxdx(2S/p)^2, Bxdx(S/p)^2 (p = patch 14; 256x288x288,
    256x144x144, 256x72x72 at full size). Names as the official neck's `trunk` and
    `sam2_convs.i`."""

    def __init__(self, trunk: ViT, d_model: int,
                 scale_factors: tuple[float, ...] = SAM2_SCALES) -> None:
        super().__init__()
        self.trunk = trunk
        dim = trunk.channel_list[-1]
        self.sam2_convs = nn.ModuleList(pyramid_level(dim, d_model, s) for s in scale_factors)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = self.trunk(x)[-1]  # (B, C, S/p, S/p)
        return [level(t) for level in self.sam2_convs]


class Sam3Interactive(Sam2):
    """SAM 3's interactive image predictor: SAM 2.1's protocol (`Sam2`: embed_images,
    embed_images_with_features, decode with high-res features, transform_coords/boxes,
    postprocess_masks) on SAM 3's trunk, neck branch and tracker heads.

    image_size S = 1008; prepare_image: uint8 HxWx3 -> uint8 SxSx3 (stretched, `Sam3`'s);
    embedding 256x72x72, high-res [32x288x288, 64x144x144], low-res logits Px3x288x288."""

    checkpoint_ignored_prefixes: tuple[str, ...] = UNUSED_PREFIXES
    max_hole_area: int = MAX_HOLE_AREA
    # The official processor's image preparation, shared with the concept model
    prepare_image = Sam3.prepare_image

    def __init__(self, image_encoder: Sam2Branch, sam_prompt_encoder: Sam2PromptEncoder,
                 sam_mask_decoder: Sam2MaskDecoder, image_size: int) -> None:
        super().__init__(image_encoder, sam_prompt_encoder, sam_mask_decoder, image_size,
                         pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD)

    @staticmethod
    def strip_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official file's keys -> ours (`FILE_PREFIXES`); every other key is kept as it
        is, so that the declared unused parts are skipped and anything else is named."""
        out = {}
        for k, v in state.items():
            ours = _rename(k, FILE_PREFIXES)
            out[k if ours is None else ours] = v
        return out

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits BxCxhxw -> float32 BxCxHxW logits at orig_hw: small background holes
        filled (`fill_holes`, at most `max_hole_area` low-res pixels), then one bilinear
        resize (align_corners=False), as the official `SAM2Transforms.postprocess_masks`."""
        masks = masks.float()
        if self.max_hole_area > 0:
            masks = fill_holes(masks, self.max_hole_area, self.mask_threshold)
        return F.interpolate(masks, tuple(orig_hw), mode="bilinear", align_corners=False)


def _build(*, image_size: int, vit_dim: int, vit_depth: int, vit_heads: int,
           window_size: int, global_blocks: tuple[int, ...], pretrain_size: int,
           d_model: int, patch_size: int = 14) -> Sam3Interactive:
    """The trunk as `sam3`'s (models/sam3/builders.py), the SAM 2 branch at d_model, and the
    tracker's heads at d_model with their fixed sizes."""
    trunk = ViT(img_size=image_size, patch_size=patch_size, embed_dim=vit_dim, depth=vit_depth,
                num_heads=vit_heads, mlp_ratio=4.625, window_size=window_size,
                global_att_blocks=global_blocks, pretrain_img_size=pretrain_size,
                use_interp_rope=True, pretrain_use_cls_token=True, qkv_bias=True,
                bias_patch_embed=False)
    grid = image_size // patch_size
    prompt_encoder = Sam2PromptEncoder(embed_dim=d_model, image_embedding_size=(grid, grid),
                                       input_image_size=(image_size, image_size),
                                       mask_in_chans=MASK_IN_CHANS)
    decoder = Sam2MaskDecoder(
        transformer_dim=d_model,
        transformer=TwoWayTransformer(depth=2, embedding_dim=d_model, num_heads=DECODER_HEADS,
                                      mlp_dim=DECODER_MLP_DIM),
        iou_head_hidden_dim=IOU_HEAD_HIDDEN_DIM)
    return Sam3Interactive(Sam2Branch(trunk, d_model), prompt_encoder, decoder, image_size)


def build_sam3_interactive() -> Sam3Interactive:
    """SAM 3's box and point prompts at full size (official file sam3.pt, the same as
    `sam3`): the 1008 px ViT of `sam3` (width 1024, 32 blocks), its neck's SAM 2 branch and the
    tracker's heads, 256 wide."""
    return _build(image_size=1008, vit_dim=1024, vit_depth=32, vit_heads=16, window_size=24,
                  global_blocks=(7, 15, 23, 31), pretrain_size=336, d_model=256)


def build_sam3_interactive_tiny_test() -> Sam3Interactive:
    """The same design at `sam3_tiny_test`'s trunk (168 px, 12x12 tokens, width 64, 4 blocks)
    with a 32-wide neck branch and heads: embedding 32x12x12, high-res [4x48x48, 8x24x24],
    48x48 low-res masks. The heads keep the tracker's fixed MLP, heads and IoU head, so the
    official code builds it too (tests/golden/make_sam3_official.py)."""
    return _build(image_size=168, vit_dim=64, vit_depth=4, vit_heads=4, window_size=8,
                  global_blocks=(1, 3), pretrain_size=112, d_model=32)


INTERACTIVE_BUILDERS: dict[str, Callable[[], Sam3Interactive]] = {
    "sam3_interactive": build_sam3_interactive,
    "sam3_interactive_tiny_test": build_sam3_interactive_tiny_test,
}
INTERACTIVE_FILES = {"sam3_interactive": "sam3.pt"}
