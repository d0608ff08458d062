"""Prompted masks with FastSAM: its own selection among its everything-mode masks, as the
official `FastSAMPrompt` (CASIA-IVA-Lab/FastSAM `fastsam/prompt.py`) does it on the retina masks
(masks at the original size):

- a box prompt: the mask with the highest "box IoU" |mask & box| / (|box| + |mask| -
  |mask & box|), the box rounded to whole pixels (Python's round, half to even) and clamped to
  the image (`box_prompt`); the first of equal ones. Its score is the detection confidence.
- a point prompt: the masks are taken largest first (ties in detection order); every mask that
  contains a point is painted into one mask with that point's label (1 sets, 0 clears; a later
  point of the prompt inside the same mask wins), so smaller masks paint over larger ones
  (`point_prompt`). Points are whole pixels (x, y truncated); a point outside the image is in
  no mask. Its score: the highest confidence among the masks painted with a foreground label
  (0 when none); it has no stability score.
- no detection at all: an empty mask with score 0 (the official code fails there).
A prompt with a box and points has no FastSAM meaning and is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from models import OnePassModel, PromptableModel
from models.yolov8_seg import masks_native

from ..config import CPU_BATCH, GeneratorConfig
from ..everything.geometry import stability_score
from ..everything.one_pass import Detections, detect_everything
from ..runtime.batch_size import upscale_chunk
from .prompts import MaskChunk, PromptSet


def official_box(box: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """float XYXY -> the whole-pixel box the official box_prompt slices with: each side
    rounded half to even, x0/y0 at least 0, x1/y1 at most the width/height."""
    h, w = hw
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    return max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)


def _integral(binary: torch.Tensor) -> torch.Tensor:
    """bool KxHxW -> int32 Kx(H+1)x(W+1) summed-area tables (zero first row and column)."""
    table = binary.to(torch.int32).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def _box_sums(table: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Summed-area tables Kx(H+1)x(W+1) and B whole-pixel boxes -> int64 BxK pixels of each
    mask inside each box (an empty slice, x1 <= x0 or y1 <= y0, holds 0)."""
    out = torch.zeros((len(boxes), table.shape[0]), dtype=torch.int64, device=table.device)
    for b, (x0, y0, x1, y1) in enumerate(boxes):
        if x1 > x0 and y1 > y0:
            out[b] = (table[:, y1, x1] - table[:, y0, x1] - table[:, y1, x0]
                      + table[:, y0, x0]).long()
    return out


def _check_structure(prompts: PromptSet) -> None:
    """Refuse prompts with a box and points (FastSAM has no selection for both)."""
    if np.any(prompts.has_box & (prompts.n_points > 0)):
        raise ValueError("expected FastSAM prompts with a box or points, got a prompt with "
                         "both (FastSAM selects by box or by points, not by both)")


class FastSamPrompter:
    """One mask per prompt with a one-pass model (FastSAM), see the module docstring.

    generator: detection_conf, detection_iou, detection_imgsz (FastSAM's everything mode),
    stability_score_offset; batch_size: images per network call; upscale_batch_size: full-size
    masks made at once (fewer for large images: at most MASK_PIXEL_BUDGET pixels)."""

    def __init__(self, model: nn.Module, generator: GeneratorConfig | None = None,
                 batch_size: int = CPU_BATCH, upscale_batch_size: int = 64) -> None:
        if not isinstance(model, OnePassModel) or isinstance(model, PromptableModel):
            raise ValueError(f"expected a one-pass model (models.OnePassModel), got "
                             f"{type(model).__name__}")
        if batch_size < 1 or upscale_batch_size < 1:
            raise ValueError(f"expected batch sizes >= 1, got {batch_size} and "
                             f"{upscale_batch_size}")
        self.model = model.eval()
        self.generator = generator or GeneratorConfig()
        self.batch_size = batch_size
        self.upscale_batch_size = upscale_batch_size

    def encode(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """uint8 HxWx3 RGB images -> their everything-mode detections, batch_size images per
        network call."""
        g = self.generator
        out: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            out += detect_everything(self.model, images[start : start + self.batch_size],
                                     detection_conf=g.detection_conf,
                                     detection_iou=g.detection_iou,
                                     detection_imgsz=g.detection_imgsz)
        return out

    def iter_masks(self, images: Sequence[np.ndarray], prompts: PromptSet
                   ) -> Iterator[MaskChunk]:
        """uint8 HxWx3 RGB images and their prompts -> one mask per prompt, in chunks of one
        image's prompts; the images' detections are made batch_size images at a time."""
        _check_structure(prompts)
        todo = sorted(set(prompts.image.tolist()))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            found = dict(zip(chunk, self.encode([images[i] for i in chunk]), strict=True))
            yield from self.masks(found, prompts)

    @torch.inference_mode()
    def masks(self, encoded: Sequence[Detections] | dict[int, Detections], prompts: PromptSet
              ) -> Iterator[MaskChunk]:
        """Detections of the images (a list, or {image index: detections}) and prompts of
        them -> the masks, in chunks of one image's prompts."""
        _check_structure(prompts)
        items = encoded.items() if isinstance(encoded, dict) else enumerate(encoded)
        for image, det in items:
            idx = np.flatnonzero(prompts.image == image)
            if len(idx):
                yield from self._image(image, det, prompts, idx)

    def _step(self, hw: tuple[int, int]) -> int:
        """Full-size masks made at once for an image of `hw`."""
        return upscale_chunk(self.upscale_batch_size, hw)

    def _masks(self, det: Detections, index: torch.Tensor) -> torch.Tensor:
        """float32 KxHxW logits of detections `index` (rows of the whole product)."""
        return masks_native(det.protos, det.coeffs[index], det.boxes[index], det.orig_hw,
                            low_res=det.low_res[index])

    def _survey(self, det: Detections, boxes: list[tuple[int, int, int, int]],
                points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every detection's mask area (int64 N), its pixels inside each box (int64 BxN) and
        whether it holds each point (bool MxN; int Mx2 (x, y) pixels, -1 for none), made a
        chunk of full-size masks at a time."""
        n, (h, w) = len(det), det.orig_hw
        device = det.boxes.device
        areas = torch.zeros(n, dtype=torch.int64, device=device)
        inside = torch.zeros((len(boxes), n), dtype=torch.int64, device=device)
        holds = torch.zeros((len(points), n), dtype=torch.bool, device=device)
        valid = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & \
            (points[:, 1] < h) if len(points) else np.zeros(0, bool)
        px = torch.from_numpy(points[valid, 0]).to(device)
        py = torch.from_numpy(points[valid, 1]).to(device)
        step = self._step((h, w))
        for start in range(0, n, step):
            binary = det.mask_logits(start, start + step) > self.model.mask_threshold
            areas[start : start + step] = binary.flatten(1).sum(1)
            if boxes:
                inside[:, start : start + step] = _box_sums(_integral(binary), boxes)
            if valid.any():
                holds[torch.from_numpy(valid).to(device), start : start + step] = \
                    binary[:, py, px].T
        return areas, inside, holds

    def _image(self, image: int, det: Detections, prompts: PromptSet, idx: np.ndarray
               ) -> Iterator[MaskChunk]:
        """The masks of prompts `idx` of one image with detections `det`."""
        h, w = det.orig_hw
        device = det.boxes.device
        box_rows = idx[prompts.has_box[idx]]
        point_rows = idx[~prompts.has_box[idx]]
        boxes = [official_box(prompts.boxes[k], (h, w)) for k in box_rows]
        # every point of every point prompt, as whole pixels (-1: padding)
        n_max = prompts.points.shape[1]
        pts = np.trunc(prompts.points[point_rows]).astype(np.int64).reshape(-1, 2)
        pts[prompts.labels[point_rows].reshape(-1) < 0] = -1
        areas, inside, holds = self._survey(det, boxes, pts)
        scores = det.scores.float()
        threshold = self.model.mask_threshold
        # Box prompts: the mask of highest box IoU
        if len(box_rows):
            box_area = torch.tensor([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes],
                                    dtype=torch.float64, device=device)
            union = box_area[:, None] + areas[None, :].double() - inside.double()
            box_iou = torch.nan_to_num(inside.double() / union, nan=-1.0)  # (B, N)
            for start in range(0, len(box_rows), self._step((h, w))):
                sl = slice(start, start + self._step((h, w)))
                if len(det):
                    best = box_iou[sl].argmax(dim=1)
                    logits = self._masks(det, best)
                    masks = logits > threshold
                    stab = stability_score(logits, threshold,
                                           self.generator.stability_score_offset).float()
                    iou = scores[best]
                else:
                    masks = torch.zeros((len(box_rows[sl]), h, w), dtype=torch.bool,
                                        device=device)
                    iou = stab = torch.zeros(len(box_rows[sl]), device=device)
                yield MaskChunk(image=image, index=box_rows[sl], masks=masks,
                                iou=iou.cpu().numpy().astype(np.float32),
                                stability=stab.cpu().numpy().astype(np.float32))
        # Point prompts: paint the masks holding a point, largest first
        if len(point_rows):
            order = torch.argsort(-areas, stable=True).tolist()
            holds = holds.view(len(point_rows), n_max, -1)  # point prompts have points
            step = self._step((h, w))
            for start in range(0, len(point_rows), step):
                rows = point_rows[start : start + step]
                masks = torch.zeros((len(rows), h, w), dtype=torch.bool, device=device)
                iou = np.zeros(len(rows), np.float32)
                for r, k in enumerate(rows):
                    self._paint(det, masks[r], holds[start + r], prompts.labels[k], order,
                                iou, r)
                yield MaskChunk(image=image, index=rows, masks=masks, iou=iou,
                                stability=np.full(len(rows), np.nan, np.float32))

    def _paint(self, det: Detections, out: torch.Tensor, holds: torch.Tensor,
               labels: np.ndarray, order: list[int], iou: np.ndarray, r: int) -> None:
        """Paint one point prompt's mask into `out` (bool HxW): holds bool NmaxxN (a point of
        the prompt in a detection), labels int Nmax (-1 padding); iou[r] gets its score."""
        held = holds.any(dim=0).cpu().numpy()
        painted = [j for j in order if held[j]]
        if not painted:
            return
        # the label a mask paints: that of the last of the prompt's points inside it
        last = holds.cpu().numpy()[:, painted]  # (Nmax, R)
        value = [int(labels[np.flatnonzero(last[:, c])[-1]]) for c in range(len(painted))]
        scores = det.scores.float().cpu().numpy()
        step = self._step(det.orig_hw)
        for start in range(0, len(painted), step):
            ids = painted[start : start + step]
            binary = self._masks(det, torch.tensor(ids, device=out.device)) > \
                self.model.mask_threshold
            for j, mask, v in zip(ids, binary, value[start : start + step], strict=True):
                out[mask] = bool(v)
                if v:
                    iou[r] = max(iou[r], scores[j])
