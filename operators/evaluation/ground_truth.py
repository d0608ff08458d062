"""Ground truth of the evaluated images: the `annotations` of a sample's SA-1B json, or the
annotations of a COCO instances JSON matched to the sample keys by file name.

An instance is a dict {"id", "bbox" (XYWH), "area", "segmentation", "iscrowd"}; its mask is
decoded only when a protocol needs it (`instance_masks`). COCO's polygons and uncompressed RLE
are turned into compressed RLE at the image's size, as pycocotools' `annToRLE` does
(efficientvit's `ann_to_mask` likewise). The protocols skip instances with `area` < 1
(metrics.is_evaluated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ..config import GroundTruthConfig
from ..prompted.sources import CocoInstances
from .proposals import sa1b_to_coco_annotations


def to_rle(segmentation, h: int, w: int) -> dict:
    """A COCO segmentation (polygons, uncompressed RLE with list counts, or compressed RLE with
    str/bytes counts) -> compressed RLE {"size": [h, w], "counts": bytes} for pycocotools."""
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    if isinstance(segmentation, Mapping) and "counts" in segmentation:
        counts = segmentation["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects(dict(segmentation), h, w)
        size = [int(v) for v in segmentation["size"]]
        if size != [h, w]:
            raise ValueError(f"expected a mask of size {[h, w]}, got {size}")
        return {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError(f"expected polygons or an RLE {{size, counts}}, got {segmentation!r:.80}")


def instance_masks(instances: Sequence[Mapping], h: int, w: int) -> np.ndarray:
    """Ground-truth instances of an HxW image -> bool KxHxW masks."""
    if not instances:
        return np.zeros((0, h, w), dtype=bool)
    rles = [to_rle(inst["segmentation"], h, w) for inst in instances]
    return np.moveaxis(mask_utils.decode(rles), -1, 0).astype(bool)


def coco_annotations(instances: Sequence[Mapping], image_id: int, first_id: int, h: int,
                     w: int) -> list[dict]:
    """Instances of an HxW image -> COCO ground-truth annotations {id, image_id, category_id
    (proposals.CATEGORY), segmentation (compressed RLE, str counts), area, bbox, iscrowd}, ids
    from `first_id`."""
    rles = []
    for inst in instances:
        rle = to_rle(inst["segmentation"], h, w)
        counts = rle["counts"]
        rles.append({**inst, "segmentation": {
            "size": [h, w], "counts": counts.decode() if isinstance(counts, bytes) else counts}})
    out = sa1b_to_coco_annotations(rles, image_id, first_id)
    for ann, inst in zip(out, instances, strict=True):
        ann["iscrowd"] = int(inst.get("iscrowd", 0))
    return out


def parse_instances(annotations: Sequence[Mapping], what: str) -> list[dict]:
    """Annotation dicts -> instances {id, bbox, area, segmentation, iscrowd}; ValueError naming
    the annotation that lacks a field."""
    out = []
    for n, ann in enumerate(annotations):
        missing = [k for k in ("bbox", "area", "segmentation") if k not in ann]
        if missing:
            raise ValueError(f"expected bbox, area and segmentation in annotation {n} of "
                             f"{what}, got no {', '.join(missing)}")
        out.append({"id": ann.get("id", n), "bbox": [float(v) for v in ann["bbox"]],
                    "area": float(ann["area"]), "segmentation": ann["segmentation"],
                    "iscrowd": int(ann.get("iscrowd", 0))})
    return out


class CocoGroundTruth:
    """ground_truth.source coco: the instances of a COCO JSON, by sample key; `annotations`:
    the file's raw annotations per image (row of `images`), `categories` its categories."""

    needs_annotations = False

    def __init__(self, path: str, storage_options: dict | None = None) -> None:
        coco = CocoInstances(path, storage_options)
        self.images, self.index, self.path = coco.images, coco.index, path
        self.categories: list[dict] = list(coco.data.get("categories") or [])
        self.annotations: list[list[dict]] = [[] for _ in self.images]
        for ann in coco.data["annotations"]:
            if ann.get("image_id") in coco.row_of:
                self.annotations[coco.row_of[ann["image_id"]]].append(ann)

    def __call__(self, key: str, annotations_json: str = "") -> list[dict] | None:
        row = self.index.find(key)
        if row is None:
            return None
        return parse_instances(self.annotations[row], f"'{self.path}' image "
                                                      f"{self.images[row]['id']}")


class SA1BGroundTruth:
    """ground_truth.source sa1b: the instances of a sample's own json (`annotations_json`)."""

    needs_annotations = True

    def __call__(self, key: str, annotations_json: str) -> list[dict] | None:
        if not annotations_json:
            return None
        return parse_instances(json.loads(annotations_json), f"the json of '{key}'")


def load_ground_truth(ground_truth: GroundTruthConfig, storage_options: dict | None = None
                      ) -> SA1BGroundTruth | CocoGroundTruth:
    """The ground truth of the `ground_truth` section: a callable (sample key, the row's
    annotations_json) -> the image's instances, or None when it has none on record."""
    if ground_truth.source == "sa1b":
        return SA1BGroundTruth()
    if ground_truth.path is None:
        raise ValueError("expected ground_truth.path (a COCO instances JSON) for "
                         "ground_truth.source coco, got none")
    return CocoGroundTruth(ground_truth.path, storage_options)
