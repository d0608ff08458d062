"""Everything mode for one-pass models (FastSAM): the model segments every instance at once;
this selects its detections as the official predictor does and turns their masks into the same
SA-1B annotations the point-grid generator writes.

Field by field, for a one-pass model:
- `segmentation`, `area`, `bbox`: from the binary mask (logits > the model's mask_threshold) at
  the original size, as for SAM; `bbox` is the box of the mask, not the detector's box.
- `predicted_iou`: the detection confidence (there is no IoU head).
- `stability_score`: computed from the mask logits with the same formula and offset as for SAM
  (it is reported, not used as a filter: the official FastSAM does not filter on it).
- `point_coords`: empty (no prompts); `crop_box`: the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from models import OnePassModel, PromptableModel
from models.transforms import check_image
from models.yolov8_seg import (
    LetterboxGeometry,
    letterbox,
    letterbox_geometry,
    masks_native,
    prototype_logits,
    scale_boxes_to_original,
    xywh_to_xyxy,
)

from ..config import CPU_BATCH, GeneratorConfig
from ..runtime.batch_size import upscale_chunk
from .full_image import full_image_annotations
from .nms import nms

MAX_NMS = 30000  # candidates (highest confidence first) that enter NMS
MAX_DET = 300  # detections kept per image
BORDER_SNAP = 20  # box sides this close (network-input pixels) to the border move onto it
FULL_BOX_IOU = 0.9  # a box with IoU above this with the whole input becomes the whole input


# -- the official selection of detections ---------------------------------------------------


def select_detections(
    preds: torch.Tensor, detection_conf: float, detection_iou: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official non_max_suppression for one image of a one-class model (class-agnostic;
    with one class the official per-class box offset is zero): anchors with score >
    `detection_conf`,
    sorted by score (highest first), at most MAX_NMS into `nms`, at most MAX_DET kept.

    preds float (5+32)xA (xywh, score, coefficients). Returns boxes float Kx4 XYXY in input
    pixels, scores float K (descending), coefficients float Kx32."""
    preds = preds.float()
    cand = preds[:, preds[4] > detection_conf].T  # (n, 37)
    order = torch.argsort(cand[:, 4], descending=True)[:MAX_NMS]
    cand = cand[order]
    boxes = xywh_to_xyxy(cand[:, :4])
    keep = nms(boxes, None, detection_iou, max_keep=MAX_DET)
    return boxes[keep], cand[keep, 4], cand[keep, 5:]


def snap_full_image_box(boxes: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """FastSAM's adjustment after NMS, in network-input pixels (boxes float Kx4 XYXY, K > 0):

    1. every box side within BORDER_SNAP (20) pixels of the input border is moved onto it
       (x1, y1 < 20 -> 0; x2 > W - 20 -> W; y2 > H - 20 -> H). The official code does this as a
       side effect of its IoU helper, which edits the detections in place, so it changes every
       returned box and the box crop of every mask;
    2. a box with IoU > FULL_BOX_IOU (0.9) with the whole input [0, 0, W, H] becomes exactly
       that box, keeping its score and mask coefficients.

    The official code handles one such box; with two or more its assignment of several scores
    into one slot raises, and FastSAM's `predict` returns None for the image. Here each of
    them becomes the whole-input box. Returns the new float Kx4 boxes."""
    h, w = input_hw
    x1, y1, x2, y2 = boxes.unbind(1)
    zero, full_w, full_h = boxes.new_tensor(0.0), boxes.new_tensor(float(w)), boxes.new_tensor(
        float(h)
    )
    x1 = torch.where(x1 < BORDER_SNAP, zero, x1)
    y1 = torch.where(y1 < BORDER_SNAP, zero, y1)
    x2 = torch.where(x2 > w - BORDER_SNAP, full_w, x2)
    y2 = torch.where(y2 > h - BORDER_SNAP, full_h, y2)
    snapped = torch.stack((x1, y1, x2, y2), 1)
    inter = (torch.minimum(x2, full_w) - torch.maximum(x1, zero)).clamp(min=0) * (
        torch.minimum(y2, full_h) - torch.maximum(y1, zero)
    ).clamp(min=0)
    union = full_w * full_h + (x2 - x1) * (y2 - y1) - inter
    critical = inter / union > FULL_BOX_IOU
    full = boxes.new_tensor([0.0, 0.0, float(w), float(h)])
    return torch.where(critical[:, None], full, snapped)


@dataclass(frozen=True)
class Detections:
    """One image's everything-mode detections, highest score first: `boxes` float32 Nx4 XYXY
    original pixels, `scores` float32 N, mask coefficients `coeffs` Nx32 and the image's
    prototypes `protos` 32xhxw, from which `mask_logits` makes full-size masks on demand."""

    boxes: torch.Tensor
    scores: torch.Tensor
    coeffs: torch.Tensor
    protos: torch.Tensor
    orig_hw: tuple[int, int]
    low_res: torch.Tensor = field(init=False, repr=False)  # float32 Nxhxw, one product

    def __post_init__(self) -> None:
        # All detections' prototype-resolution logits in one product, so that a chunk of full
        # masks is exactly those rows of the whole (a matmul's rounding may vary with its rows)
        object.__setattr__(self, "low_res", prototype_logits(self.protos, self.coeffs))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def mask_logits(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """float32 KxHxW logits at the original size of detections start:stop; chunks equal
        the rows of the whole (see `masks_native`)."""
        sl = slice(start, stop)
        if len(self.boxes[sl]) == 0:
            return self.boxes.new_zeros((0, *self.orig_hw))
        return masks_native(self.protos, self.coeffs[sl], self.boxes[sl], self.orig_hw,
                            low_res=self.low_res[sl])


def _postprocess(
    preds: torch.Tensor,
    protos: torch.Tensor,
    geom: LetterboxGeometry,
    detection_conf: float,
    detection_iou: float,
) -> Detections:
    """One image's network outputs (preds (5+32)xA, protos 32xhxw) -> its detections."""
    boxes, scores, coeffs = select_detections(preds, detection_conf, detection_iou)
    if boxes.shape[0]:
        boxes = snap_full_image_box(boxes, geom.input_hw)
        boxes = scale_boxes_to_original(boxes, geom)
    return Detections(boxes=boxes, scores=scores, coeffs=coeffs, protos=protos,
                      orig_hw=geom.orig_hw)


@torch.inference_mode()
def detect_everything(
    model: nn.Module,
    images: Sequence[np.ndarray | torch.Tensor],
    detection_conf: float = 0.4,
    detection_iou: float = 0.9,
    detection_imgsz: int = 1024,
) -> list[Detections]:
    """FastSAM everything mode of a one-pass `model` (YoloV8Seg), as the official
    `FastSAM(...)(image, retina_masks=True, imgsz=1024, conf=0.4, iou=0.9)` run on each image
    alone.

    images: uint8 HxWx3 RGB arrays (numpy or torch), any sizes. Each is letterboxed as the
    official predictor does for a single image (`letterbox_geometry`; the official one
    converts its input to RGB before the network, as given here), scaled to [0, 1]; images
    with the same letterboxed size go through the network as one batch.

    Returns per image its `Detections` (on the model's device, highest score first,
    N <= 300, N = 0 without detections): boxes and scores now, the full-size masks on
    demand, a chunk at a time (`Detections.mask_logits`)."""
    if not 0.0 <= detection_conf <= 1.0:
        raise ValueError(f"expected detection_conf in [0, 1], got {detection_conf}")
    if not 0.0 <= detection_iou <= 1.0:
        raise ValueError(f"expected detection_iou in [0, 1], got {detection_iou}")
    device = model.device
    dtype = next(model.parameters()).dtype
    tensors, geoms = [], []
    for i, image in enumerate(images):
        # numpy images may be read-only (Ray hands out views of its object store)
        t = torch.as_tensor(np.array(image) if isinstance(image, np.ndarray) else image)
        if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3:
            raise ValueError(
                f"image {i}: expected uint8 HxWx3 RGB, got {t.dtype} {tuple(t.shape)}"
            )
        tensors.append(t)
        geoms.append(letterbox_geometry((t.shape[0], t.shape[1]), detection_imgsz))
    # Batch the images that share a letterboxed size
    groups: dict[tuple[int, int], list[int]] = {}
    for i, geom in enumerate(geoms):
        groups.setdefault(geom.input_hw, []).append(i)
    results: list[Detections | None] = [None for _ in tensors]
    for idx in groups.values():
        # letterboxed on the host (cv2, as the official code), then one copy to the device
        batch = torch.stack(
            [letterbox(tensors[i].permute(2, 0, 1), geoms[i]) for i in idx]
        ).to(device, non_blocking=True)
        preds, protos = model((batch / 255).to(dtype))
        for j, i in enumerate(idx):
            results[i] = _postprocess(preds[j], protos[j], geoms[i], detection_conf, detection_iou)
    return results


def segment_everything(
    model: nn.Module,
    images: Sequence[np.ndarray | torch.Tensor],
    detection_conf: float = 0.4,
    detection_iou: float = 0.9,
    detection_imgsz: int = 1024,
) -> list[dict[str, torch.Tensor]]:
    """`detect_everything` with every mask made at once. Per image:
    - "mask_logits": float32 NxHxW at the original size; `> mask_threshold` (0) is the
      official mask (see `masks_native`);
    - "boxes": float32 Nx4 XYXY in original pixels (after FastSAM's border / whole-image
      adjustment, see `snap_full_image_box`);
    - "scores": float32 N, the class confidence.
    N full-size float32 masks can be large (300 at 2250x1500: 4 GB); the auto-labeler
    takes them in chunks from `detect_everything` instead."""
    return [{"mask_logits": d.mask_logits(), "boxes": d.boxes, "scores": d.scores}
            for d in detect_everything(model, images, detection_conf=detection_conf,
                                       detection_iou=detection_iou,
                                       detection_imgsz=detection_imgsz)]


# -- annotations -----------------------------------------------------------------------------


class OnePassGenerator:
    """Everything-mode annotations of a one-pass model (models.OnePassModel, e.g. FastSAM).

    generator: the job's `generator` section (detection_conf, detection_iou, detection_imgsz,
    stability_score_offset; upscale_batch_size: full-size masks made at once, float32 HxW each,
    fewer for large images so that a chunk stays within MASK_PIXEL_BUDGET pixels: memory is
    bounded whatever the image size and detection count). batch_size: images per network call
    (model.batch_size resolved; see runtime.batch_size)."""

    def __init__(self, model: nn.Module, generator: GeneratorConfig | None = None,
                 batch_size: int = CPU_BATCH) -> None:
        if not isinstance(model, OnePassModel) or isinstance(model, PromptableModel):
            raise ValueError(f"expected a one-pass model (models.OnePassModel), got "
                             f"{type(model).__name__}")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.model = model.eval()
        self.generator = generator or GeneratorConfig()

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray], encode: bool = True) -> list[list[dict]]:
        """RGB uint8 HxWx3 images -> per image, SA-1B annotation dicts (without `id`), in
        the model's order (highest confidence first). segmentation: COCO compressed RLE with
        `encode`, else {"size": [H, W], "runs": int32 COCO counts} for
        `coco_rle.finish_annotations` (as `MaskGenerator.generate`)."""
        for image in images:
            check_image(image)
        g = self.generator
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            found = detect_everything(self.model, chunk, detection_conf=g.detection_conf,
                                      detection_iou=g.detection_iou,
                                      detection_imgsz=g.detection_imgsz)
            out += [self._annotations(image, det, encode)
                    for image, det in zip(chunk, found, strict=True)]
        return out

    def _annotations(self, image: np.ndarray, det: Detections, encode: bool) -> list[dict]:
        """One image's detections -> its SA-1B annotations. Full-size masks are made a chunk
        at a time on the device and run-length encoded there (`masks_to_runs`); only change
        points, areas and boxes come back to the host."""
        h, w = image.shape[:2]
        scores = torch.as_tensor(det.scores).float().cpu().tolist()
        step = upscale_chunk(self.generator.upscale_batch_size, (h, w))
        chunks = (det.mask_logits(start, start + step).float()
                  for start in range(0, len(det), step))
        return full_image_annotations(chunks, scores, (h, w), float(self.model.mask_threshold),
                                      self.generator.stability_score_offset, encode)
