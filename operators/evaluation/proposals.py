"""Class-agnostic object-proposal recall (AR@10/100/1000, AR small/medium/large @1000) of
everything-mode masks, with pycocotools' COCOeval, as in the SAM paper (section 7.3) and FastSAM.

Conventions, with where they come from:
- Proposals are ranked by the mean of predicted IoU and stability score, and only the top 1000
  of an image are kept (facebookresearch/segment-anything issue 205, an author's answer; SAM's
  generator settings there: 64x64 grid, no crops, no predicted-IoU or stability filter, box
  NMS 0.9). That mean is also the `score` COCOeval ranks by for AR@10 and AR@100.
- COCOeval "segm", `useCats = 0` (every ground truth is one class), `maxDets = [10, 100, 1000]`;
  AR@10/100/1000 = stats[6:9], AR small/medium/large @1000 = stats[9:12]. Recall is averaged
  over the IoU thresholds 0.50:0.05:0.95 (issue 205: "as in the usual AP/AR calculation").
- Size buckets come from the ground truth's `area` field, closed at both ends (COCOeval ignores
  a ground truth when area < areaRng[0] or area > areaRng[1]; areaRng small [0, 32**2],
  medium [32**2, 96**2], large [96**2, 1e10]).
- Detections are passed without `bbox`: COCO.loadRes reads a result with a `bbox` as a box
  result and replaces its area by the box's (efficientvit's `evaluate_predictions_on_coco`
  drops `bbox` for "segm" too). Every detection gets the ground truth's first category id:
  with useCats = 0 COCOeval pools all categories, but still files detections under a category
  id of the ground truth. So a multi-category ground truth (COCO or LVIS instances, crowd
  regions included: `iscrowd` 1 is ignored as COCOeval does) is evaluated class-agnostically.
- COCOeval reports -1 where a bucket has no ground truth; we return None there.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}  # as the COCO exporter's
MAX_PROPOSALS = 1000
MAX_DETS = (10, 100, 1000)
AR_KEYS = ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000")
AREA_RANGES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e5**2)}


def sa1b_to_coco_annotations(annotations: Sequence[Mapping], image_id: int, first_id: int = 1
                             ) -> list[dict]:
    """SA-1B annotations of one image (each with `segmentation` {"size": [h, w], "counts"},
    `bbox` XYWH and `area`) -> COCO ground-truth annotations {id, image_id, category_id,
    segmentation, area, bbox, iscrowd=0}, ids from `first_id` (>= 1: COCOeval reads id 0 as
    "no match")."""
    if first_id < 1:
        raise ValueError(f"expected first_id >= 1, got {first_id}")
    out = []
    for n, ann in enumerate(annotations):
        missing = [k for k in ("segmentation", "bbox", "area") if k not in ann]
        if missing:
            raise ValueError(f"expected SA-1B annotation keys segmentation, bbox, area; "
                             f"annotation {n} of image {image_id} lacks {missing}")
        seg = ann["segmentation"]
        if not isinstance(seg, Mapping) or "size" not in seg or "counts" not in seg:
            raise ValueError(f"expected an RLE segmentation {{size, counts}}, got {seg!r:.80} "
                             f"in annotation {n} of image {image_id}")
        out.append({"id": first_id + n, "image_id": image_id, "category_id": CATEGORY["id"],
                    "segmentation": {"size": list(seg["size"]), "counts": seg["counts"]},
                    "area": ann["area"], "bbox": list(ann["bbox"]), "iscrowd": 0})
    return out


def coco_ground_truth(images: Sequence[Mapping], annotations: Sequence[Mapping]) -> dict:
    """A class-agnostic COCO ground-truth dict: `images` ({id, height, width, ...}) and
    `annotations` (e.g. from `sa1b_to_coco_annotations`, ids distinct and >= 1) under the one
    category `CATEGORY`."""
    ids = [a["id"] for a in annotations]
    if len(set(ids)) != len(ids) or any(i < 1 for i in ids):
        raise ValueError("expected distinct annotation ids >= 1, got duplicates or ids < 1")
    image_ids = {img["id"] for img in images}
    stray = sorted({a["image_id"] for a in annotations} - image_ids)
    if stray:
        raise ValueError(f"expected annotations of the given images, got image ids {stray[:5]}")
    return {"images": [dict(i) for i in images], "annotations": [dict(a) for a in annotations],
            "categories": [dict(CATEGORY)]}


def proposal_scores(predicted_iou: np.ndarray, stability_score: np.ndarray) -> np.ndarray:
    """float N predicted IoUs and float N stability scores -> float64 N ranking scores (their
    mean)."""
    predicted_iou = np.asarray(predicted_iou, dtype=np.float64)
    stability_score = np.asarray(stability_score, dtype=np.float64)
    if predicted_iou.shape != stability_score.shape or predicted_iou.ndim != 1:
        raise ValueError(f"expected two float N arrays, got shapes {predicted_iou.shape} and "
                         f"{stability_score.shape}")
    return (predicted_iou + stability_score) / 2


def rank_proposals(image_id: int, masks: Sequence[Mapping], limit: int = MAX_PROPOSALS
                   ) -> list[dict]:
    """Everything-mode masks of one image (each with `segmentation` RLE, `predicted_iou`,
    `stability_score`, as in SA-1B records) -> at most `limit` detections {image_id,
    segmentation, score}, best first, score = mean of predicted IoU and stability score (ties
    keep input order). A mask without a stability score (a FastSAM point prompt's, from
    `samdata segment`) ranks by its predicted IoU alone."""
    if not masks:
        return []
    iou = np.array([m["predicted_iou"] for m in masks], dtype=np.float64)
    stability = np.array([m["predicted_iou"] if m["stability_score"] is None
                          else m["stability_score"] for m in masks], dtype=np.float64)
    scores = proposal_scores(iou, stability)
    order = np.argsort(-scores, kind="stable")[:limit]
    return [{"image_id": image_id, "segmentation": masks[i]["segmentation"],
             "score": float(scores[i])} for i in order]


def coco_quietly(gt: Mapping) -> COCO:
    """pycocotools COCO object of a ground-truth dict (copied: COCOeval writes into
    annotations), its index built without printing."""
    coco = COCO()
    coco.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_detections(gt: COCO, detections: Sequence[Mapping]) -> None:
    """Raise ValueError unless every detection names a ground-truth image and its mask has that
    image's size."""
    for n, det in enumerate(detections):
        missing = [k for k in ("image_id", "segmentation", "score") if k not in det]
        if missing:
            raise ValueError(f"expected detection keys image_id, segmentation, score; "
                             f"detection {n} lacks {missing}")
        img = gt.imgs.get(det["image_id"])
        if img is None:
            raise ValueError(f"expected detections of ground-truth images, got image_id "
                             f"{det['image_id']!r} in detection {n}")
        seg = det["segmentation"]
        if not isinstance(seg, Mapping) or "size" not in seg or "counts" not in seg:
            raise ValueError(f"expected an RLE segmentation {{size, counts}}, got {seg!r:.80} "
                             f"in detection {n}")
        size = list(seg["size"])
        if size != [img["height"], img["width"]]:
            raise ValueError(f"expected a mask of size {[img['height'], img['width']]} for image "
                             f"{det['image_id']}, got {size} in detection {n}")


def _recall_without_detections(gt: COCO) -> dict[str, float | None]:
    """The AR dict when there are no detections (loadRes cannot load an empty list): 0 where a
    bucket has ground truth, None where it has none."""
    anns = [a for a in gt.dataset["annotations"] if not a.get("iscrowd", 0)]
    out: dict[str, float | None] = {k: (0.0 if anns else None) for k in AR_KEYS[:3]}
    for name, (lo, hi) in AREA_RANGES.items():
        present = any(lo <= a["area"] <= hi for a in anns)
        out[f"AR_{name}@1000"] = 0.0 if present else None
    return out


def average_recall(gt: Mapping, detections: Sequence[Mapping]) -> dict[str, float | None]:
    """Class-agnostic recall of `detections` ({image_id, segmentation RLE, score}; any other key
    is dropped) against the COCO ground-truth dict `gt` (images with height and width;
    annotations with `segmentation`, `area`, `iscrowd`; categories, all pooled into one class).

    Returns {"AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000",
    "AR_large@1000"}: COCOeval's numbers in [0, 1], None where a bucket has no ground truth.
    Images of `gt` without detections count with recall 0; only the `maxDets` best-scored
    detections of each image count.
    """
    coco_gt = coco_quietly(gt)
    if not coco_gt.getCatIds():
        raise ValueError("expected a ground truth with at least one category, got none")
    _check_detections(coco_gt, detections)
    if not detections:
        return _recall_without_detections(coco_gt)
    cat_id = coco_gt.getCatIds()[0]  # any ground-truth category: all are pooled
    dets = [{"image_id": d["image_id"], "category_id": cat_id, "segmentation": d["segmentation"],
             "score": float(d["score"])} for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.params.useCats = 0
        evaluator.params.maxDets = list(MAX_DETS)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[6:12]]
    return {k: (None if s < 0 else s) for k, s in zip(AR_KEYS, stats, strict=True)}
