"""`Sam2`: the image path of SAM 2.1 (facebookresearch/sam2) with the SAM-family protocol of
models/protocols.py (see models/sam.py), plus the high-resolution features SAM 2's decoder
needs (`HighResPromptableModel`).

Image pipeline (official `SAM2Transforms` and `SAM2ImagePredictor.set_image`):
- uint8 HxWx3 -> float32 / 255, STRETCHED to SxS (S = 1024): bilinear, align_corners=False,
  antialiased (torchvision's `Resize((S, S))` on a tensor); no aspect kept, no padding
  (input_hw = (S, S)). Runs on the CPU in `prepare_image`, which returns float32 0..1;
- ImageNet mean/std on 0..1 values;
- Hiera trunk -> FPN neck -> maps at strides 4, 8, 16; the stride-16 map plus the learned
  `no_mem_embed` (what the video model adds on a frame without memory) is the image embedding
  Bx256x64x64; the stride-4 and stride-8 maps through the decoder's `conv_s0` / `conv_s1` are
  the high-res features Bx32x256x256 and Bx64x128x128.

Prompts: coordinates are divided by the original (w, h) and multiplied by S (the official
`transform_coords(normalize=True)`); low-res 256x256 logits go bilinear straight to the original
size (`postprocess_masks` with hole and sprinkle removal off, the predictor's default);
mask_threshold 0.0. The official predictor also clamps the low-res logits it returns to
[-32, 32] (for reuse as a mask prompt); `decode` returns them unclamped, as the upscaled masks
are made from them (`LOW_RES_CLAMP` is that bound for callers that feed them back).

The module names equal the official `SAM2Base` for the image path (`image_encoder.trunk`,
`image_encoder.neck`, `sam_prompt_encoder`, `sam_mask_decoder`, `no_mem_embed`); the video
modules of the official files are listed in `VIDEO_ONLY_PREFIXES` and skipped on load.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import check_image
from .decoder import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    Sam2MaskDecoder,
    Sam2PromptEncoder,
)
from .neck import ImageEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on 0..1 RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
LOW_RES_CLAMP = 32.0  # the official predictor's bound on the low-res logits it hands back

# Keys of the official SAM 2.1 files that only the video model uses (memory attention and
# encoder, object pointers, temporal encodings, ...): present in every official checkpoint,
# not part of the image path, skipped by `build_model`. Any other unknown key is an error.
VIDEO_ONLY_PREFIXES: tuple[str, ...] = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
)


class Sam2(nn.Module):
    """SAM 2.1's image model: image encoder, prompt encoder and mask decoder.

    `embed_images` gives the image embedding alone (BxCxhxw, what embedding corpora store);
    `embed_images_with_features` gives it with the high-res features, which `decode` needs:

        feats = model.embed_images_with_features(pixels, hws)
        low_res, iou = model.decode(feats["image_embed"], point_coords=..., point_labels=...,
                                    high_res_features=feats["high_res_feats"])
    """

    mask_threshold: float = 0.0
    checkpoint_wrappers: tuple[str, ...] = ("model",)  # official files are {"model": sd}
    checkpoint_ignored_prefixes: tuple[str, ...] = VIDEO_ONLY_PREFIXES
    # What a student takes from its teacher (models/export.py): the prompt encoder, the mask
    # decoder (its conv_s0/conv_s1 high-res projections and object-score head included) and
    # the no-memory embedding the image embedding carries
    head_prefixes: tuple[str, ...] = ("sam_prompt_encoder.", "sam_mask_decoder.",
                                      "no_mem_embed")
    # The parts distill trains or freezes (operators/training/loop.py), by their module names
    part_modules: dict[str, str] = {"image_encoder": "image_encoder",
                                    "prompt_encoder": "sam_prompt_encoder",
                                    "mask_decoder": "sam_mask_decoder"}

    def __init__(self, image_encoder: ImageEncoder, sam_prompt_encoder: Sam2PromptEncoder,
                 sam_mask_decoder: Sam2MaskDecoder, image_size: int,
                 pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
                 pixel_std: tuple[float, float, float] = IMAGENET_STD) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        dim = sam_prompt_encoder.embed_dim
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.image_size = image_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def prompt_size(self) -> int:
        """The square prompts live in: the encoder's (coordinates are scaled to S x S)."""
        return self.image_size

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """CxHxW of one image embedding (256x64x64 for the official models)."""
        h, w = self.sam_prompt_encoder.image_embedding_size
        return (self.sam_prompt_encoder.embed_dim, h, w)

    @property
    def high_res_shapes(self) -> list[tuple[int, int, int]]:
        """CxHxW of the two high-res features: [32x256x256, 64x128x128] at full size."""
        c, h, w = self.embedding_shape
        return [(c // 8, 4 * h, 4 * w), (c // 4, 2 * h, 2 * w)]

    # -- images -------------------------------------------------------------------------------

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """(S, S) for any image: the stretched image fills the encoder's square."""
        return (self.image_size, self.image_size)

    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 HxWx3 RGB -> (float32 SxSx3 in 0..1, (S, S)): divide by 255, then stretch to
        SxS bilinear (align_corners=False, antialiased); an SxS image is not resampled."""
        check_image(image)
        # astype copies (decoded images may be read-only); uint8 -> float32 is exact
        x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None].div(255)
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x[0].permute(1, 2, 0).contiguous().numpy(), (size, size)

    def normalize(self, images: torch.Tensor,
                  input_hws: list[tuple[int, int]] | torch.Tensor | None = None) -> torch.Tensor:
        """float Bx3xSxS in 0..1 (as `prepare_image` makes; uint8 0..255 is divided by 255
        first) -> float32 Bx3xSxS, (x - mean) / std. Images of another size are stretched as
        `prepare_image` does. input_hws is ignored: nothing is padded."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images Bx3xHxW, got {tuple(images.shape)}")
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255
        size = self.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.pixel_mean) / self.pixel_std

    def embed_images_with_features(
        self, images: torch.Tensor,
        input_hws: list[tuple[int, int]] | torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Prepared float Bx3xSxS images (0..1) -> {"image_embed": Bx256x64x64,
        "high_res_feats": [Bx32x256x256, Bx64x128x128]} (float32, or the autocast dtype; the
        official predictor's `_features`)."""
        s4, s8, s16 = self.image_encoder(self.normalize(images, input_hws))
        decoder = self.sam_mask_decoder
        embed = s16 + self.no_mem_embed.view(1, -1, 1, 1)
        return {"image_embed": embed, "high_res_feats": [decoder.conv_s0(s4), decoder.conv_s1(s8)]}

    def embed_images(self, images: torch.Tensor,
                     input_hws: list[tuple[int, int]] | torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Prepared float Bx3xSxS images (0..1) -> image embeddings Bx256x64x64."""
        return self.embed_images_with_features(images, input_hws)["image_embed"]

    # -- prompts ------------------------------------------------------------------------------

    def transform_coords(self, coords: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """...x2 (x, y) pixels of the original image -> float64 ...x2 in the SxS prompt frame:
        x / W * S, y / H * S."""
        coords = coords.to(torch.float64)
        w_h = coords.new_tensor([orig_hw[1], orig_hw[0]])
        return coords / w_h * self.image_size  # divide first, as the official transform

    def transform_boxes(self, boxes: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Bx4 XYXY boxes of the original image -> float64 Bx4 in the prompt frame."""
        return self.transform_coords(boxes.reshape(-1, 2, 2), orig_hw).reshape(-1, 4)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts already in the prompt frame: PxNx2 coords with PxN labels (1 foreground,
        0 background), Px4 XYXY boxes, Px1x256x256 mask logits; image_embeddings Ix256x64x64
        and high_res_features [Ix32x256x256, Ix64x128x128] of the same images (I = 1 or I
        divides P, each image's prompts contiguous), from `embed_images_with_features`.

        As the official `SAM2ImagePredictor._predict`: a box becomes two corner points (labels
        2, 3) before the clicks, the prompt encoder pads every prompt with one "not a point"
        token; multimask_output=False is the single mask with the dynamic fallback.

        Returns float32 low-res logits PxCx256x256 (unclamped) and IoU predictions PxC
        (C = 3 or 1)."""
        masks, iou, _ = self.decode_with_object_scores(
            image_embeddings, point_coords, point_labels, boxes, mask_input, multimask_output,
            high_res_features)
        return masks, iou

    def decode_with_object_scores(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`decode`, also returning the object-score logits Px1 (> 0: an object is there)."""
        if high_res_features is None:
            raise ValueError("expected high_res_features (SAM 2's decoder needs the stride-4 "
                             "and stride-8 maps: embed with embed_images_with_features), got "
                             "None")
        points = self._points(point_coords, point_labels, boxes)
        sparse, dense = self.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        return self.sam_mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            high_res_features=list(high_res_features),
            multimask_output=multimask_output,
        )

    @staticmethod
    def _points(point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Boxes as corner points (labels 2, 3) first, then the clicks: (PxMx2, PxM) or None."""
        coords, labels = [], []
        if boxes is not None:
            if boxes.shape[-1] != 4:
                raise ValueError(f"expected boxes Px4 (XYXY), got {tuple(boxes.shape)}")
            corners = boxes.reshape(-1, 2, 2)
            coords.append(corners)
            kinds = torch.tensor([LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT],
                                 dtype=torch.int, device=boxes.device)
            labels.append(kinds.expand(corners.shape[0], 2))
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("expected point_labels with point_coords, got None")
            if (point_coords.dim() != 3 or point_coords.shape[-1] != 2
                    or tuple(point_labels.shape) != tuple(point_coords.shape[:2])):
                raise ValueError(
                    "expected point_coords PxNx2 and point_labels PxN, got "
                    f"{tuple(point_coords.shape)} and {tuple(point_labels.shape)}")
            coords.append(point_coords)
            labels.append(point_labels.to(torch.int))
        if not coords:
            return None
        if len({c.shape[0] for c in coords}) > 1:
            raise ValueError(f"expected as many boxes as point prompts, got {coords[0].shape[0]}"
                             f" boxes and {coords[1].shape[0]} point prompts")
        return torch.cat(coords, dim=1), torch.cat(labels, dim=1)

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits BxCxhxw -> float32 BxCxHxW logits at orig_hw: one bilinear resize
        (align_corners=False), as the official `SAM2Transforms.postprocess_masks`."""
        return F.interpolate(masks.float(), tuple(orig_hw), mode="bilinear",
                             align_corners=False)
