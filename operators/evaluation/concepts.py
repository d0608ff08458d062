"""Average precision of concept labels (instances with a category, e.g. SAM 3's for a list of
concept names) against a COCO ground truth with categories: box AP and mask AP by category
with pycocotools' COCOeval, the COCO detection protocol.

Conventions, with where they come from:
- COCOeval with `useCats = 1` and its standard `maxDets = [1, 10, 100]` (at most 100
  detections per image and category count): AP (IoU 0.50:0.05:0.95), AP50, AP75 and AP
  small/medium/large = stats[0:6]; per-category AP is the mean of `eval["precision"][:, :, k,
  0, -1]` over its entries > -1, as detectron2's COCOEvaluator computes it. Size buckets come
  from the ground truth's `area` (COCOeval's areaRng). COCOeval's -1 (no ground truth in a
  bucket or category) is None here.
- Categories are matched BY NAME between the labels and the ground truth, compared stripped
  and case-insensitive (`canonical`); the ids of the two sides never meet. Only the matched
  ground-truth categories are evaluated (`params.catIds`): a ground-truth category the labels
  were never asked for is reported, not counted as missed, and label categories the ground
  truth lacks are reported and left out. No name in common refuses the evaluation
  (GroundTruthMismatch): a number from the wrong vocabulary is worse than none.
- A detection's score is its carried `score` (the concept instance's), else its predicted IoU
  (export_filter.score_of). Box detections carry only `bbox` (XYWH) and mask detections only
  `segmentation` (COCO.loadRes reads a result with a `bbox` as a box result and replaces its
  area by the box's).
- Crowd regions (`iscrowd` 1) are ignored as COCOeval ignores them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..dataset.export_filter import score_of
from .binding import GroundTruthMismatch
from .ground_truth import to_rle
from .proposals import coco_quietly

AP_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")  # stats[0:6]
MAX_DETS = (1, 10, 100)  # COCOeval's defaults for detection
IOU_TYPES = {"box": "bbox", "mask": "segm"}  # our result key -> COCOeval iouType


def canonical(name: str) -> str:
    """A category name as names are compared: stripped and case-folded."""
    return str(name).strip().casefold()


@dataclass
class CategoryMatch:
    """How the categories of a label dataset meet the ground truth's.

    gt_id_of: label category name -> ground-truth category id (matched names only);
    matched: ground-truth names that some label category matched, in ground-truth id order;
    labels_only: label names without a ground-truth category; ground_truth_only: ground-truth
    names no label category matched."""

    gt_id_of: dict[str, int] = field(default_factory=dict)
    matched: list[str] = field(default_factory=list)
    labels_only: list[str] = field(default_factory=list)
    ground_truth_only: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"matched": self.matched, "labels_only": self.labels_only,
                "ground_truth_only": self.ground_truth_only}


def ground_truth_categories(categories: Sequence[Mapping], what: str) -> dict[str, dict]:
    """COCO `categories` ({id, name, ...}) -> {canonical name: category}; ValueError when
    there are none, one lacks id or name, or two names are one after `canonical`."""
    if not categories:
        raise ValueError(f"expected COCO `categories` in {what} (the concepts protocol matches "
                         f"them by name), got none")
    out: dict[str, dict] = {}
    for n, cat in enumerate(categories):
        if not isinstance(cat, Mapping) or "id" not in cat or not str(cat.get("name", "")).strip():
            raise ValueError(f"expected every category of {what} with an id and a name, got "
                             f"{cat!r:.80} (category {n})")
        key = canonical(cat["name"])
        if key in out:
            raise ValueError(f"expected distinct category names in {what} (compared stripped "
                             f"and case-insensitive), got '{out[key]['name']}' and "
                             f"'{cat['name']}'")
        out[key] = dict(cat)
    return out


def match_categories(label_names: Iterable[str], gt: Mapping[str, Mapping]) -> CategoryMatch:
    """Label category names (in their order) against `ground_truth_categories(...)`."""
    match = CategoryMatch()
    hit: set[int] = set()
    for name in label_names:
        cat = gt.get(canonical(name))
        if cat is None:
            match.labels_only.append(name)
        else:
            match.gt_id_of[name] = int(cat["id"])
            hit.add(int(cat["id"]))
    for cat in sorted(gt.values(), key=lambda c: int(c["id"])):
        (match.matched if int(cat["id"]) in hit else match.ground_truth_only).append(cat["name"])
    return match


def refuse_without_match(row: str, label_names: Sequence[str], gt: Mapping[str, Mapping],
                         match: CategoryMatch) -> None:
    """GroundTruthMismatch (one line naming both lists) when no label category matched."""
    if match.gt_id_of:
        return
    gt_names = [c["name"] for c in sorted(gt.values(), key=lambda c: int(c["id"]))]
    raise GroundTruthMismatch(
        f"labels '{row}' and the ground truth share no category (names compared stripped and "
        f"case-insensitive): expected label categories among the ground truth's {gt_names}, "
        f"got {list(label_names)}")


def concept_instances(annotations: Sequence[Mapping], image_id: int, first_id: int, h: int,
                      w: int, what: str) -> list[dict]:
    """Ground-truth annotations of one HxW image (COCO: polygons or RLE, `category_id`) ->
    COCO ground-truth dicts {id, image_id, category_id, segmentation (compressed RLE, str
    counts), area, bbox (XYWH), iscrowd}, ids from `first_id` (>= 1); ValueError naming the
    annotation that lacks a field."""
    if first_id < 1:
        raise ValueError(f"expected first_id >= 1, got {first_id}")
    out = []
    for n, ann in enumerate(annotations):
        missing = [k for k in ("bbox", "area", "segmentation", "category_id") if k not in ann]
        if missing:
            raise ValueError(f"expected bbox, area, segmentation and category_id in annotation "
                             f"{n} of {what}, got no {', '.join(missing)}")
        rle = to_rle(ann["segmentation"], h, w)
        counts = rle["counts"]
        out.append({"id": first_id + n, "image_id": image_id,
                    "category_id": int(ann["category_id"]),
                    "segmentation": {"size": [h, w], "counts": counts.decode()
                                     if isinstance(counts, bytes) else counts},
                    "area": float(ann["area"]), "bbox": [float(v) for v in ann["bbox"]],
                    "iscrowd": int(ann.get("iscrowd", 0))})
    return out


def concept_detections(image_id: int, h: int, w: int, annotations: Sequence[Mapping],
                       gt_id_of: Mapping[str, int]) -> tuple[list[dict], list[dict]]:
    """Concept labels of one HxW image (each with `category`, `segmentation` RLE {size,
    counts}, `bbox` XYWH and a score, see the module docstring) -> (box detections {image_id,
    category_id, bbox, score}, mask detections {image_id, category_id, segmentation, score}),
    under the ground-truth ids of their category names; labels of unmatched (or no)
    categories are left out. ValueError when a mask is not HxW."""
    boxes, masks = [], []
    for n, ann in enumerate(annotations):
        cid = gt_id_of.get(ann.get("category"))
        if cid is None:
            continue
        seg = ann["segmentation"]
        size = [int(v) for v in seg["size"]]
        if size != [h, w]:
            raise ValueError(f"expected label masks of the image's size {[h, w]}, got {size} "
                             f"(annotation {n} of image {image_id})")
        score = score_of(ann)
        boxes.append({"image_id": image_id, "category_id": cid,
                      "bbox": [float(v) for v in ann["bbox"]], "score": score})
        masks.append({"image_id": image_id, "category_id": cid,
                      "segmentation": {"size": size, "counts": seg["counts"]}, "score": score})
    return boxes, masks


def _without_detections(gt: COCO, cat_ids: Sequence[int], names: Mapping[int, str]) -> dict:
    """The AP dict when there are no detections (loadRes cannot load an empty list): 0 where
    a bucket or category has ground truth, None where it has none."""
    anns = [a for a in gt.dataset["annotations"]
            if not a.get("iscrowd", 0) and a["category_id"] in set(cat_ids)]
    out: dict = {k: (0.0 if anns else None) for k in AP_KEYS[:3]}
    for name, (lo, hi) in (("small", (0, 32**2)), ("medium", (32**2, 96**2)),
                           ("large", (96**2, 1e10))):
        out[f"AP_{name}"] = 0.0 if any(lo <= a["area"] <= hi for a in anns) else None
    out["per_category"] = {names[c]: (0.0 if any(a["category_id"] == c for a in anns) else None)
                           for c in cat_ids}
    return out


def average_precision(gt: Mapping, detections: Sequence[Mapping], kind: str,
                      cat_ids: Sequence[int]) -> dict:
    """COCOeval AP of `detections` (box: {image_id, category_id, bbox, score}; mask: {image_id,
    category_id, segmentation, score}) against the COCO ground-truth dict `gt` (images with
    height and width, annotations, categories), over the categories `cat_ids` only.

    kind: "box" or "mask". Returns {"AP", "AP50", "AP75", "AP_small", "AP_medium",
    "AP_large": COCOeval's stats[0:6] in [0, 1], "per_category": {ground-truth name: AP}};
    None where a bucket or category has no ground truth."""
    if kind not in IOU_TYPES:
        raise ValueError(f"expected kind one of {sorted(IOU_TYPES)}, got '{kind}'")
    coco_gt = coco_quietly(gt)
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    unknown = sorted(set(cat_ids) - set(names))
    if not cat_ids or unknown:
        raise ValueError(f"expected ground-truth category ids to evaluate, got {list(cat_ids)}"
                         f" ({unknown} not in the ground truth)")
    cat_ids = sorted(int(c) for c in cat_ids)
    stray = sorted({d["image_id"] for d in detections} - set(coco_gt.getImgIds()))
    if stray:
        raise ValueError(f"expected detections of ground-truth images, got image ids "
                         f"{stray[:5]}")
    if not detections:
        return _without_detections(coco_gt, cat_ids, names)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(coco_gt, coco_dt, IOU_TYPES[kind])
        evaluator.params.useCats = 1
        evaluator.params.catIds = cat_ids
        evaluator.params.maxDets = list(MAX_DETS)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[:6]]
    out: dict = {k: (None if s < 0 else s) for k, s in zip(AP_KEYS, stats, strict=True)}
    precision = evaluator.eval["precision"]  # T x R x K x A x M, K in params.catIds order
    per = {}
    for k, cid in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per[names[cid]] = float(np.mean(p)) if p.size else None
    out["per_category"] = per
    return out
