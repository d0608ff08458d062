"""Everything mode for one-pass models (FastSAM): the model segments every instance at once;
this turns its masks into the same SA-1B annotations the prompt-based generator writes.

Field by field, for a one-pass model:
- `segmentation`, `area`, `bbox`: from the binary mask (logits > the model's mask_threshold) at
  the original size, as for SAM; `bbox` is the box of the mask, not the detector's box.
- `predicted_iou`: the detection confidence (there is no IoU head).
- `stability_score`: computed from the mask logits with the same formula and offset as for SAM
  (it is reported, not used as a filter: the official FastSAM does not filter on it).
- `point_coords`: empty (no prompts); `crop_box`: the whole image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models.transforms import check_image

from .amg import mask_to_rle, masks_to_boxes, stability_score

# Pixels of full-size masks made at once (64 masks of 1024x1024: 256 MiB of float32 logits).
MASK_PIXEL_BUDGET = 64 * 1024 * 1024


@dataclass(frozen=True)
class OnePassSettings:
    """Parameters of a one-pass model's everything mode; defaults are FastSAM's."""

    conf: float = 0.4  # detection confidence threshold
    iou: float = 0.9  # class-agnostic NMS IoU threshold
    imgsz: int = 1024  # letterbox size (longest side)
    stability_score_offset: float = 1.0  # for the reported stability score

    def as_dict(self) -> dict:
        return asdict(self)


class OnePassGenerator:
    """Everything-mode annotations from a model offering `detect_everything(images, conf, iou,
    imgsz)` (per image: `boxes` Nx4, `scores` N, `len()` and `mask_logits(start, stop)` ->
    KxHxW at the original size) and `mask_threshold`.

    image_batch_size: images per network call. mask_batch_size: full-size masks made at once
    (float32 HxW each), fewer for large images so that a chunk stays within
    MASK_PIXEL_BUDGET pixels: memory is bounded whatever the image size and detection count."""

    def __init__(self, model: nn.Module, settings: OnePassSettings | None = None,
                 mask_batch_size: int = 64, image_batch_size: int = 4) -> None:
        if not hasattr(model, "detect_everything"):
            raise ValueError(f"expected a one-pass model with detect_everything(), got "
                             f"{type(model).__name__}")
        for name, value in (("mask_batch_size", mask_batch_size),
                            ("image_batch_size", image_batch_size)):
            if value < 1:
                raise ValueError(f"expected {name} >= 1, got {value}")
        self.image_batch_size = image_batch_size
        self.model = model.eval()
        self.settings = settings or OnePassSettings()
        self.mask_batch_size = mask_batch_size

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray]) -> list[list[dict]]:
        """RGB uint8 HxWx3 images -> per image, SA-1B annotation dicts (without `id`), in
        the model's order (highest confidence first)."""
        for image in images:
            check_image(image)
        s = self.settings
        out = []
        for start in range(0, len(images), self.image_batch_size):
            chunk = images[start : start + self.image_batch_size]
            found = self.model.detect_everything(chunk, conf=s.conf, iou=s.iou, imgsz=s.imgsz)
            out += [self._annotations(image, det) for image, det in zip(chunk, found, strict=True)]
        return out

    def _annotations(self, image: np.ndarray, det) -> list[dict]:
        h, w = image.shape[:2]
        threshold = float(self.model.mask_threshold)
        scores = torch.as_tensor(det.scores).float().cpu().tolist()
        anns = []
        step = max(1, min(self.mask_batch_size, MASK_PIXEL_BUDGET // (h * w)))
        for start in range(0, len(det), step):
            logits = det.mask_logits(start, start + step).float()
            stability = stability_score(logits, threshold, self.settings.stability_score_offset)
            binary = logits > threshold
            del logits
            # one device->host copy per chunk, not one per mask
            boxes = masks_to_boxes(binary).tolist()
            areas = binary.flatten(1).sum(1).tolist()
            stability = stability.tolist()
            binary = binary.cpu().numpy()
            for k, area in enumerate(areas):
                if not area:
                    continue  # a detection whose mask vanished at the threshold
                x0, y0, x1, y1 = (int(v) for v in boxes[k])
                anns.append({
                    "segmentation": mask_to_rle(binary[k]),
                    "area": int(area),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(scores[start + k]),
                    "point_coords": [],
                    "stability_score": float(stability[k]),
                    "crop_box": [0, 0, w, h],
                })
        return anns
