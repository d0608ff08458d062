"""The `Sam` wrapper: encoder + prompt encoder + mask decoder, with the official pre- and
post-processing split so that the CPU part can run on Ray's decode workers.

Every SAM-family model in the registry offers the same methods, so pipelines never special-case
a model by name:

- `prepare_image(uint8 HxWx3) -> (uint8 SxSx3, input_hw)`  CPU: resize (+ pad with zeros)
- `normalize(uint8/float Bx3xSxS, input_hws) -> float Bx3xSxS`  device: normalise, zero the pad
- `image_encoder(float Bx3xSxS) -> Bx256x64x64` (the embedding; sizes per model)
- `transform_coords(...x2 xy, orig_hw) -> float64 ...x2` into the prompt frame; `transform_boxes`
  likewise
- `decode(...) -> (low-res logits, iou)`; `postprocess_masks(...) -> logits at orig_hw`
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import PromptModelProperties
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transforms import longest_side_shape, pad_bottom_right, resize_longest_side

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(PromptModelProperties, nn.Module):
    """Segment Anything: image encoder, prompt encoder and mask decoder."""

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = SAM_PIXEL_STD,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # The square the encoder sees; prompts live in the prompt encoder's frame.
        self.image_size = image_size or image_encoder.img_size
        self.prompt_size = prompt_encoder.input_image_size[0]

    # -- images -------------------------------------------------------------------------------

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """Size (h, w) of the resized, unpadded image the encoder sees for an image of orig_hw."""
        return longest_side_shape(orig_hw[0], orig_hw[1], self.image_size)

    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 HxWx3 RGB -> (uint8 SxSx3 resized and zero-padded, (h, w) before padding).

        The zero pad is replaced by the normalised zero in `normalize`, as the official model
        pads after normalisation."""
        resized = resize_longest_side(image, self.image_size)
        return pad_bottom_right(resized, self.image_size), resized.shape[:2]

    def normalize(
        self, images: torch.Tensor, input_hws: list[tuple[int, int]] | torch.Tensor
    ) -> torch.Tensor:
        """uint8 or float Bx3xSxS (0..255) -> float32 Bx3xSxS, (x - mean) / std inside each
        image's input_hw and exactly 0 outside it."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        hws = torch.as_tensor(input_hws, device=x.device).view(-1, 2)
        rows = torch.arange(x.shape[-2], device=x.device)
        cols = torch.arange(x.shape[-1], device=x.device)
        inside = (rows[None, :, None] < hws[:, 0, None, None]) & (
            cols[None, None, :] < hws[:, 1, None, None]
        )  # (B, S, S)
        return torch.where(inside[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))

    def embed_images(self, images: torch.Tensor,
                     input_hws: list[tuple[int, int]] | torch.Tensor) -> torch.Tensor:
        """uint8 Bx3xSxS prepared images, input_hws Bx2 (list or int tensor on the images'
        device) -> image embeddings Bx256x64x64."""
        return self.image_encoder(self.normalize(images, input_hws))

    # -- prompts ------------------------------------------------------------------------------

    def transform_coords(self, coords: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """...x2 (x, y) pixel coordinates of the original image -> float64 ...x2 in the prompt
        frame. Computed in float64 as the official (numpy) transform; callers cast as the
        official code does (the predictor to float32, the mask generator not at all)."""
        new_h, new_w = longest_side_shape(orig_hw[0], orig_hw[1], self.prompt_size)
        coords = coords.to(torch.float64).clone()
        coords[..., 0] = coords[..., 0] * (new_w / orig_hw[1])
        coords[..., 1] = coords[..., 1] * (new_h / orig_hw[0])
        return coords

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts already in the prompt frame: PxNx2 coords, PxN labels, Px4 boxes,
        Px1x256x256 mask logits; image_embeddings Ix256x64x64 (I = 1 or I divides P).

        Returns low-res logits PxCx256x256 and IoU predictions PxC (C = 3 or 1)."""
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits BxCxhxw -> BxCxHxW logits at orig_hw: bilinear to the prompt frame,
        crop the padding, bilinear to the original size (the official order)."""
        size = self.prompt_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        crop = longest_side_shape(orig_hw[0], orig_hw[1], size)
        masks = masks[..., : crop[0], : crop[1]]
        return F.interpolate(masks, tuple(orig_hw), mode="bilinear", align_corners=False)


def build_sam(
    encoder: ImageEncoderViT,
    prompt_embed_dim: int = 256,
    image_size: int = 1024,
    patch_size: int = 16,
    mask_in_chans: int = 16,
    decoder_depth: int = 2,
    decoder_heads: int = 8,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
    layer_norm_eps: float = 1e-5,
    layer_norm2d_eps: float = 1e-6,
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN,
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD,
) -> Sam:
    """Assemble a SAM-family model around `encoder` with the SAM prompt encoder and decoder."""
    from .transformer import TwoWayTransformer

    grid = image_size // patch_size
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
            norm_eps=layer_norm2d_eps,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                num_heads=decoder_heads,
                mlp_dim=decoder_mlp_dim,
                norm_eps=layer_norm_eps,
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
            norm_eps=layer_norm2d_eps,
        ),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )
