"""Click simulation of the point-prompt protocol (1 / 3 / 5 clicks), as RITM defines it and as
efficientvit's SAM evaluation uses it.

Conventions, with where they come from (SamsungLabs/ritm_interactive_segmentation
`isegm/inference/clicker.py`, `Clicker._get_next_click`; efficientvit copies it into
`applications/efficientvit_sam/sam_eval_utils.py` and drives it from `run_point` in
`eval_efficientvit_sam_model.py`):
- Error regions: false negatives = gt & ~pred, false positives = ~gt & pred.
- Each region is padded by one background pixel on every side before its Euclidean distance
  transform (distance to the nearest pixel outside the region) and cropped back, so the image
  border counts as boundary: a region touching the border is shallow there.
- Pixels clicked before get distance 0, so no pixel is clicked twice.
- The click is positive when the false-negative maximum is strictly larger than the
  false-positive one; a tie (both 0 included) gives a negative click.
- The click lies at the first maximum in row-major order (smallest y, then smallest x).
- The first click is the next click against an all-False prediction: a positive click at the
  deepest point of the ground truth.
- If no error pixel is left (a perfect prediction), the official code still returns a click:
  negative, at pixel (x=0, y=0). We keep that, so that the rounds after a perfect prediction
  prompt the model as the official evaluation does.
- Clicks are integer pixel indices given to the model as (x, y) with labels 1 (positive) / 0
  (negative), all clicks so far in every round; the model answers with the mask of highest
  predicted IoU among its 3 (multimask output) at the original image size.

RITM's distance transform is OpenCV's exact L2 (`cv2.DIST_L2`, mask size 0) in float32; ours is
`scipy.ndimage.distance_transform_edt` (exact, float64): the same distances, apart from float32
rounding between almost equal square roots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from scipy.ndimage import distance_transform_edt

from .metrics import mask_iou

PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Click(NamedTuple):
    """One simulated click: pixel column x, pixel row y (SAM's (x, y) point order), and whether
    it is positive (foreground, label 1) or negative (background, label 0)."""

    x: int
    y: int
    positive: bool


def _check_mask(mask: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> None:
    """Raise ValueError unless `mask` is a bool HxW numpy array (of `shape`, when given)."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        got = (f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, np.ndarray)
               else type(mask).__name__)
        raise ValueError(f"expected {name} as a bool HxW numpy array, got {got}")
    if shape is not None and mask.shape != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {mask.shape}")


def border_distance(region: np.ndarray) -> np.ndarray:
    """bool HxW region -> float64 HxW Euclidean distance of each region pixel to the nearest
    pixel outside the region or outside the image (0 outside the region)."""
    padded = np.pad(region, 1, mode="constant", constant_values=False)
    return distance_transform_edt(padded)[1:-1, 1:-1]


def _deepest(dist: np.ndarray) -> tuple[int, int, float]:
    """float HxW -> (y, x, value) of its first maximum in row-major order."""
    flat = int(np.argmax(dist))
    y, x = divmod(flat, dist.shape[1])
    return y, x, float(dist[y, x])


def deepest_in(region: np.ndarray, previous: Sequence[Click] = ()) -> tuple[int, int, float]:
    """(y, x, depth) of the first deepest pixel of bool HxW `region` in row-major order
    (depth: `border_distance`), pixels of `previous` clicks excluded; (0, 0, 0.0) when no pixel
    is left, as the argmax of an all-zero distance map.

    Computed on the region's bounding box padded by one pixel, which gives the whole image's
    distances: clamping any pixel outside that ring onto it brings it no farther from a
    region pixel, and the ring is outside the region. A large image with small regions costs
    the regions' size, not the image's."""
    rows = np.flatnonzero(region.any(axis=1))
    if not len(rows):
        return 0, 0, 0.0
    cols = np.flatnonzero(region.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dist = border_distance(region[y0:y1, x0:x1])
    for click in previous:
        if y0 <= click.y < y1 and x0 <= click.x < x1:
            dist[click.y - y0, click.x - x0] = 0.0
    y, x, depth = _deepest(dist)
    return (int(y + y0), int(x + x0), depth) if depth > 0 else (0, 0, 0.0)


def next_click(gt: np.ndarray, pred: np.ndarray, previous: Sequence[Click] = ()) -> Click:
    """The next click for prediction `pred` (bool HxW) of ground truth `gt` (bool HxW): at the
    deepest point of the larger error region, positive in false negatives, negative in false
    positives. Pixels of `previous` clicks are not clicked again."""
    _check_mask(gt, "gt")
    _check_mask(pred, "pred", gt.shape)
    fn_y, fn_x, fn_max = deepest_in(gt & ~pred, previous)
    fp_y, fp_x, fp_max = deepest_in(~gt & pred, previous)
    if fn_max > fp_max:
        return Click(x=fn_x, y=fn_y, positive=True)
    return Click(x=fp_x, y=fp_y, positive=False)


def first_click(gt: np.ndarray) -> Click:
    """The first click on ground truth `gt` (bool HxW, not empty): positive, at the pixel
    deepest inside the mask (the image border counts as boundary)."""
    _check_mask(gt, "gt")
    if not gt.any():
        raise ValueError("expected a ground-truth mask with at least one pixel, got an empty one")
    return next_click(gt, np.zeros_like(gt))


def click_prompts(clicks: Sequence[Click]) -> tuple[np.ndarray, np.ndarray]:
    """Clicks -> SAM point prompts: int64 Kx2 (x, y) pixel coordinates and int64 K labels
    (1 positive, 0 negative)."""
    points = np.array([[c.x, c.y] for c in clicks], dtype=np.int64).reshape(-1, 2)
    labels = np.array([int(c.positive) for c in clicks], dtype=np.int64)
    return points, labels


def simulate_clicks(predict_fn: PredictFn, gt: np.ndarray, n_clicks: int) -> list[float]:
    """Run `n_clicks` rounds of click simulation on ground truth `gt` (bool HxW, not empty).

    Round i places a click from the prediction of round i-1 (all False before round 1), then
    calls `predict_fn(points, labels)` with every click so far (int64 Kx2 (x, y), int64 K labels
    1/0; see `click_prompts`), which returns the model's chosen mask as bool HxW. Returns the
    IoU in [0, 1] of each round's prediction with `gt`: index k is the IoU after k+1 clicks.
    """
    if n_clicks < 1:
        raise ValueError(f"expected n_clicks >= 1, got {n_clicks}")
    first_click(gt)  # checks gt: bool HxW, not empty
    pred = np.zeros_like(gt)  # the first click is the next click against an empty prediction
    clicks: list[Click] = []
    ious = []
    for _ in range(n_clicks):
        clicks.append(next_click(gt, pred, clicks))
        pred = predict_fn(*click_prompts(clicks))
        _check_mask(pred, f"the prediction after {len(clicks)} clicks", gt.shape)
        ious.append(mask_iou(pred, gt))
    return ious
