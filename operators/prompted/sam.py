"""Prompted masks with a SAM-design model (models.PromptableModel), built for throughput.

The per-prompt result is the official predictor's (`SamPredictor.predict(box=..., point_coords=
..., multimask_output=True)`, then the mask of highest predicted IoU, as the SAM family's
evaluation scripts keep it; or the single-mask output): prompts transformed to the prompt frame
in float64 and cast to float32, the same tokens (a points-only prompt gets the official padding
point, nothing else is padded: prompts of one structure go through a decoder call together),
logits upscaled to the original size and thresholded at the model's mask_threshold.

Built differently: the images of a call go through the encoder together (`batch_size` a call),
the prompts of several images through the decoder together (`decoder_batch_size` a call), the
kept mask is chosen on the low-resolution logits and only it is upscaled, `upscale_batch_size`
masks at a time. Device memory is bounded by those three numbers and the image size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models import HighResPromptableModel, PromptableModel
from models.transforms import check_image

from ..config import CPU_BATCH
from ..everything.geometry import stability_score
from ..runtime.batch_size import upscale_chunk
from .prompts import MaskChunk, PromptSet


@dataclass
class EncodedImages:
    """Images as prompts see them: embeddings IxCxhxw (on the model's device), each image's
    (H, W) and, for a HighResPromptableModel (SAM 2), its high-res features (same rows)."""

    embeddings: torch.Tensor
    orig_hws: list[tuple[int, int]]
    high_res: list[torch.Tensor] | None = None


class SamPrompter:
    """One mask per prompt with a promptable model (see the module docstring).

    multimask: 3 masks per prompt, keep the highest predicted IoU (False: the single-mask
    output); batch_size: images per encoder call; decoder_batch_size: prompts per decoder call;
    upscale_batch_size: masks upscaled to full size at once; stability_score_offset: of the
    reported stability score (generator.stability_score_offset)."""

    def __init__(self, model: nn.Module, multimask: bool = True, batch_size: int = CPU_BATCH,
                 decoder_batch_size: int = 64, upscale_batch_size: int = 64,
                 stability_score_offset: float = 1.0) -> None:
        if not isinstance(model, PromptableModel):
            raise ValueError(f"expected a promptable model (models.PromptableModel), got "
                             f"{type(model).__name__}")
        for name, value in (("batch_size", batch_size), ("decoder_batch_size",
                                                         decoder_batch_size),
                            ("upscale_batch_size", upscale_batch_size)):
            if value < 1:
                raise ValueError(f"expected {name} >= 1, got {value}")
        self.model = model.eval()
        self.multimask = multimask
        self.batch_size = batch_size
        self.decoder_batch_size = decoder_batch_size
        self.upscale_batch_size = upscale_batch_size
        self.stability_score_offset = stability_score_offset

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 RGB images -> their embeddings IxCxhxw on the model's device,
        `batch_size` images per encoder call."""
        return self._embed(images)[0]

    def _embed(self, images: Sequence[np.ndarray]
               ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """`embed`, with the high-res features of a HighResPromptableModel (else None)."""
        high_res = isinstance(self.model, HighResPromptableModel)
        out, extra = [], []
        for start in range(0, len(images), self.batch_size):
            prepared = [self.model.prepare_image(check_image(im))
                        for im in images[start : start + self.batch_size]]
            # NHWC memory seen as NCHW, as the other actors feed the encoder
            pixels = torch.from_numpy(np.stack([p for p, _ in prepared])).permute(0, 3, 1, 2)
            hws = torch.tensor([hw for _, hw in prepared])
            pixels = pixels.to(self.device, non_blocking=True)
            hws = hws.to(self.device, non_blocking=True)
            if high_res:
                feats = self.model.embed_images_with_features(pixels, hws)
                out.append(feats["image_embed"])
                extra.append(feats["high_res_feats"])
            else:
                out.append(self.model.embed_images(pixels, hws))
        if not high_res:
            return torch.cat(out), None
        return torch.cat(out), [torch.cat(level) for level in zip(*extra, strict=True)]

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> EncodedImages:
        """uint8 HxWx3 RGB images -> what prompts need of them (their embeddings, and the
        high-res features of a HighResPromptableModel)."""
        embeddings, high_res = self._embed(images)
        return EncodedImages(embeddings, [tuple(im.shape[:2]) for im in images], high_res)

    def iter_masks(self, images: Sequence[np.ndarray], prompts: PromptSet
                   ) -> Iterator[MaskChunk]:
        """uint8 HxWx3 RGB images and their prompts -> one mask per prompt, in chunks of one
        image's prompts (each at most upscale_batch_size)."""
        if len(prompts):
            yield from self.masks(self.encode(images), prompts)

    @torch.inference_mode()
    def masks(self, encoded: EncodedImages, prompts: PromptSet) -> Iterator[MaskChunk]:
        """Encoded images and prompts of them -> the masks, in chunks (see iter_masks)."""
        embeddings, orig_hws = encoded.embeddings, encoded.orig_hws
        for has_box, n_points, idx in prompts.groups():
            boxes, coords, labels = self._prompt_frame(prompts, idx, orig_hws, has_box,
                                                       n_points)
            # Decode decoder_batch_size prompts a call, of one or several images
            for start in range(0, len(idx), self.decoder_batch_size):
                sl = slice(start, start + self.decoder_batch_size)
                owner = prompts.image[idx[sl]]
                first, last = int(owner[0]), int(owner[-1])
                # One embedding row per prompt, unless they all share one
                pick = (slice(first, first + 1) if first == last
                        else torch.from_numpy(owner).to(self.device))
                extra = ({} if encoded.high_res is None
                         else {"high_res_features": [f[pick] for f in encoded.high_res]})
                low_res, iou = self.model.decode(
                    embeddings[pick],
                    point_coords=None if coords is None else coords[sl],
                    point_labels=None if labels is None else labels[sl],
                    boxes=None if boxes is None else boxes[sl],
                    multimask_output=self.multimask, **extra)
                # Keep the mask of highest predicted IoU (float32: bf16 rounds ties together)
                iou = iou.float()
                best = iou.argmax(dim=1)
                rows = torch.arange(len(best), device=best.device)
                low_res, iou = low_res[rows, best][:, None], iou[rows, best]
                # Upscale the kept masks, image by image
                for image in range(first, last + 1):
                    mine = np.flatnonzero(owner == image)
                    if len(mine):
                        yield from self._upscale(image, idx[sl][mine], low_res[mine],
                                                 iou[mine], tuple(orig_hws[image]))

    def _prompt_frame(self, prompts: PromptSet, idx: np.ndarray,
                      orig_hws: Sequence[tuple[int, int]], has_box: bool, n_points: int
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Boxes Kx4, coords KxNx2 (float32, prompt frame) and labels KxN (int32) of the
        prompts `idx`, on the device; None for a part the prompts lack. Transformed per image
        in float64, then cast, as the official predictor does."""
        boxes = coords = labels = None
        if has_box:
            boxes = torch.zeros((len(idx), 4), dtype=torch.float64)
        if n_points:
            coords = torch.zeros((len(idx), n_points, 2), dtype=torch.float64)
            labels = torch.from_numpy(prompts.labels[idx, :n_points]).to(torch.int32)
        for image in np.unique(prompts.image[idx]):
            mine = np.flatnonzero(prompts.image[idx] == image)
            hw = tuple(int(v) for v in orig_hws[image])
            if has_box:
                boxes[mine] = self.model.transform_boxes(
                    torch.from_numpy(prompts.boxes[idx[mine]]), hw).cpu()
            if n_points:
                coords[mine] = self.model.transform_coords(
                    torch.from_numpy(prompts.points[idx[mine], :n_points]), hw).cpu()

        def device(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if t is None else t.to(self.device, dtype)

        return (device(boxes, torch.float32), device(coords, torch.float32),
                device(labels, torch.int32))

    def _upscale(self, image: int, index: np.ndarray, low_res: torch.Tensor, iou: torch.Tensor,
                 orig_hw: tuple[int, int]) -> Iterator[MaskChunk]:
        """Kx1xhxw chosen low-res logits of one image -> MaskChunks at orig_hw."""
        threshold = self.model.mask_threshold
        step = upscale_chunk(self.upscale_batch_size, orig_hw)
        for start in range(0, len(index), step):
            sl = slice(start, start + step)
            logits = self.model.postprocess_masks(low_res[sl], orig_hw)[:, 0].float()  # (K,H,W)
            stability = stability_score(logits, threshold, self.stability_score_offset)
            yield MaskChunk(image=image, index=index[sl], masks=logits > threshold,
                            iou=iou[sl].float().cpu().numpy(),
                            stability=stability.float().cpu().numpy())
