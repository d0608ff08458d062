"""Masks at the full image -> SA-1B annotations, for the labelers whose masks need no crop or
NMS step after the model (one-pass models, concept labels): the logits come a chunk at a time
on the device and are run-length encoded there, so only change points, areas and boxes reach
the host."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .coco_rle import MaskRuns, runs_to_segmentations
from .geometry import stability_score
from .runlength import masks_to_runs


def full_image_annotations(logit_chunks: Iterable[torch.Tensor], scores: Sequence[float],
                           hw: tuple[int, int], threshold: float, stability_offset: float,
                           encode: bool = True) -> list[dict]:
    """`logit_chunks`: float32 kxHxW mask logits at the image's size, in order (a generator,
    so that one chunk at a time is on the device); `scores`: one predicted IoU per mask. ->
    SA-1B annotations {segmentation, area, bbox XYWH, predicted_iou, point_coords [],
    stability_score, crop_box: the whole image}, in mask order; a mask empty at `threshold` is
    dropped."""
    h, w = hw
    runs, stability = [], []
    for logits in logit_chunks:
        stability.append(stability_score(logits, threshold, stability_offset))
        runs.append(masks_to_runs(logits > threshold))
        del logits
    if not runs:
        return []
    runs = MaskRuns.cat(runs, (h, w))
    stab = torch.cat(stability).tolist()
    kept = np.flatnonzero(runs.areas > 0)
    runs = runs.take(kept)
    out = []
    for k, seg, area, box in zip(kept.tolist(), runs_to_segmentations(runs, encode),
                                 runs.areas.tolist(), runs.boxes.tolist(), strict=True):
        x0, y0, x1, y1 = box
        out.append({"segmentation": seg, "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(scores[k]), "point_coords": [],
                    "stability_score": float(stab[k]), "crop_box": [0, 0, w, h]})
    return out
