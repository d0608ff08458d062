"""Prompts and the masks that answer them.

A prompt (one mask each) is a plain dict, JSON-able so that it crosses Ray as text:
    {"box": [x0, y0, x1, y1] or None,      XYXY in original-image pixels
     "points": [[x, y], ...],              original-image pixels (may be empty)
     "labels": [1 or 0, ...],              1 foreground, 0 background, one per point
     "category_id", "category", "score", "source_id": carried through, or None}
At least a box or one point. The prompts of the images of one model call become one
`PromptSet` (arrays, index-aligned); a prompter answers with `MaskChunk`s, the masks of some of
the prompts of one image each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

CARRIED = ("category_id", "category", "score", "source_id")  # passed through to the results


def _number(value: Any, what: str) -> float:
    """A finite float, or ValueError naming `what`."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number as {what}, got {value!r:.60}") from None
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number as {what}, got {out}")
    return out


def make_prompt(box: Sequence[float] | None = None, points: Sequence[Sequence[float]] = (),
                labels: Sequence[int] | None = None, *, category_id: int | None = None,
                category: str | None = None, score: float | None = None,
                source_id: int | None = None) -> dict:
    """A validated prompt dict (see the module docstring). labels default to all 1
    (foreground). Raises ValueError naming the bad part."""
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"expected a box of 4 numbers (XYXY), got {list(box)!r:.80}")
        box = [_number(v, "a box coordinate") for v in box]
    pts = []
    for p in points:
        if len(p) != 2:
            raise ValueError(f"expected points as [x, y] pairs, got {list(p)!r:.60}")
        pts.append([_number(p[0], "a point's x"), _number(p[1], "a point's y")])
    if labels is None:
        labels = [1] * len(pts)
    labels = [int(v) for v in labels]
    if len(labels) != len(pts):
        raise ValueError(f"expected one label per point, got {len(labels)} labels for "
                         f"{len(pts)} points")
    if any(v not in (0, 1) for v in labels):
        raise ValueError(f"expected point labels 1 (foreground) or 0 (background), got {labels}")
    if box is None and not pts:
        raise ValueError("expected a box or at least one point in a prompt, got neither")
    return {"box": box, "points": pts, "labels": labels,
            "category_id": None if category_id is None else int(category_id),
            "category": None if category is None else str(category),
            "score": None if score is None else float(score),
            "source_id": None if source_id is None else int(source_id)}


@dataclass
class PromptSet:
    """The prompts of the images of one call, index-aligned (P prompts, N = the most points
    any of them has):

    image: int64 P, the prompt's image (index into the call's images);
    boxes: float64 Px4 XYXY original pixels, a NaN row where a prompt has no box;
    points: float64 PxNx2 (x, y) original pixels; labels: int64 PxN, 1 foreground,
    0 background, -1 padding after a prompt's own points."""

    image: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_prompts(cls, per_image: Sequence[Sequence[dict]]) -> PromptSet:
        """Prompt dicts (make_prompt's), one list per image -> their PromptSet, image by image
        in list order."""
        flat = [(i, p) for i, prompts in enumerate(per_image) for p in prompts]
        n = max((len(p["points"]) for _, p in flat), default=0)
        out = cls(image=np.array([i for i, _ in flat], np.int64),
                  boxes=np.full((len(flat), 4), np.nan), points=np.zeros((len(flat), n, 2)),
                  labels=np.full((len(flat), n), -1, np.int64))
        for k, (_, p) in enumerate(flat):
            if p["box"] is not None:
                out.boxes[k] = p["box"]
            m = len(p["points"])
            if m:
                out.points[k, :m] = p["points"]
                out.labels[k, :m] = p["labels"]
        return out

    def __len__(self) -> int:
        return len(self.image)

    @property
    def has_box(self) -> np.ndarray:
        """bool P: the prompt has a box."""
        return ~np.isnan(self.boxes).any(axis=1)

    @property
    def n_points(self) -> np.ndarray:
        """int64 P: the prompt's own points (its labels >= 0)."""
        return (self.labels >= 0).sum(axis=1)

    def groups(self) -> list[tuple[bool, int, np.ndarray]]:
        """Prompts of one structure go through a decoder call together: (has_box, points,
        int64 indices ordered by image) per structure present."""
        has_box, n_points = self.has_box, self.n_points
        out = []
        for box, n in sorted({(bool(b), int(m)) for b, m in zip(has_box, n_points, strict=True)}):
            idx = np.flatnonzero((has_box == box) & (n_points == n))
            out.append((box, n, idx[np.argsort(self.image[idx], kind="stable")]))
        return out


@dataclass
class MaskChunk:
    """The masks of some prompts of one image: image (index into the call's images), index
    (int64 K, into the PromptSet), masks (bool KxHxW at the image's size, on the model's
    device), iou (float32 K: the predicted IoU; FastSAM: the detection confidence) and
    stability (float32 K, the stability score; NaN where the model has none)."""

    image: int
    index: np.ndarray
    masks: torch.Tensor
    iou: np.ndarray
    stability: np.ndarray


class Prompter(Protocol):
    """A model that answers prompts (operators/prompted/sam.py, fastsam.py). `encode` does the
    per-image work once (SAM: the embedding; FastSAM: the everything-mode detections), `masks`
    answers prompts of encoded images, as often as asked (the click rounds of evaluate)."""

    def encode(self, images: Sequence[np.ndarray]) -> Any:
        """uint8 HxWx3 RGB images -> what their prompts need."""

    def masks(self, encoded: Any, prompts: PromptSet) -> Iterator[MaskChunk]:
        """Encoded images and prompts of them -> one mask per prompt, in chunks (each prompt
        in exactly one)."""

    def iter_masks(self, images: Sequence[np.ndarray], prompts: PromptSet
                   ) -> Iterator[MaskChunk]:
        """`masks(encode(images), prompts)`, in the prompter's own batches of images."""


def image_masks(prompter: Prompter, encoded: Any, hw: tuple[int, int], prompts: PromptSet
                ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The masks of prompts of one encoded image of size `hw` (all of `prompts.image` 0), in
    prompt order: bool PxHxW (on the model's device), float32 P predicted IoU, float32 P
    stability."""
    if len(prompts) and np.any(prompts.image != 0):
        raise ValueError("expected the prompts of one image (image index 0), got others")
    h, w = hw
    order, masks, iou, stab = [], [], [], []
    for chunk in prompter.masks(encoded, prompts):
        order.append(chunk.index)
        masks.append(chunk.masks)
        iou.append(chunk.iou)
        stab.append(chunk.stability)
    if not order:
        return torch.zeros((0, h, w), dtype=torch.bool), np.zeros(0, np.float32), \
            np.zeros(0, np.float32)
    index = np.concatenate(order)
    inverse = np.empty_like(index)
    inverse[index] = np.arange(len(index))
    inv = torch.from_numpy(inverse).to(masks[0].device)
    return torch.cat(masks)[inv], np.concatenate(iou)[inverse], np.concatenate(stab)[inverse]
