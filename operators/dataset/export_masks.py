"""Exporting a mask dataset as one PNG per mask, the layout segment-anything's
`scripts/amg.py` writes for an image (its binary-mask output), one folder per image:

    {out}/{shard}/{key}/{i}.png        mask i: uint8 HxW, 0 or 255, the image's size
    {out}/{shard}/{key}/metadata.csv   `id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,
                                       point_input_y,predicted_iou,stability_score,
                                       crop_box_x0,crop_box_y0,crop_box_w,crop_box_h`, then one
                                       row per mask, id = i (lines joined by "\\n", no final
                                       newline, as amg.py writes it)

i counts the masks an image keeps (after the export filters) from 0, in dataset order. A mask
without a prompt point (FastSAM's, a box prompt's) has empty point_input_x/y. The shard folder
keeps keys of different shards apart (amg.py has one input folder); shard and key are made
safe file names (`export.safe_relpath`) and two images that would share a folder are refused.
A concept-label dataset (export.dataset_concepts) has two more columns at the end,
`category_id,category` (the name quoted as CSV quotes it when it needs to be).
"""

from __future__ import annotations

import csv
import io

import fsspec
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .export import dataset_concepts, safe_relpath
from .export_filter import NO_FILTER, AnnotationFilter
from .export_images import copy_dataset_images
from .maskset import iter_rows

METADATA_HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
                   "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
CATEGORY_COLUMNS = ",category_id,category"  # concept labels: appended to the header and rows


def mask_png(segmentation: dict) -> bytes:
    """COCO RLE {size: [h, w], counts} -> the PNG bytes of its uint8 HxW 0/255 mask."""
    rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
    mask = (mask_utils.decode(rle) > 0).astype(np.uint8) * 255  # uint8 HxW
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask), mode="L").save(buf, "PNG")
    return buf.getvalue()


def metadata_row(i: int, ann: dict) -> str:
    """The metadata.csv row of mask i (values as `str()` writes them, as amg.py does)."""
    point = (ann.get("point_coords") or [["", ""]])[0]
    values = [i, ann["area"], *ann["bbox"], *point, ann["predicted_iou"],
              ann["stability_score"], *ann["crop_box"]]
    return ",".join(str(v) for v in values)


def category_cells(ann: dict) -> str:
    """`,category_id,category` of a concept label's metadata row (empty cells where none)."""
    buf = io.StringIO()
    cid = ann.get("category_id")
    csv.writer(buf, lineterminator="").writerow(["" if cid is None else cid,
                                                 ann.get("category") or ""])
    return "," + buf.getvalue()


def export_masks(root: str, out: str, storage_options: dict | None = None,
                 out_storage_options: dict | None = None, shards: str | None = None,
                 keep: AnnotationFilter = NO_FILTER, images: str | None = None) -> dict:
    """Write a folder of mask PNGs and a metadata.csv per ok image under `out` (and the
    images under `images`, when given); returns {"images", "annotations", "filtered",
    "failed"} (+ "image_files" with `images`)."""
    fs, base = fsspec.core.url_to_fs(out, **(out_storage_options or {}))
    summary = {"images": 0, "annotations": 0, "filtered": 0, "failed": []}
    if images is not None:
        summary["image_files"] = len(copy_dataset_images(root, images, storage_options,
                                                         out_storage_options, shards))
    written: dict[str, tuple[str, str]] = {}  # relative folder -> (shard, key)
    with_category = dataset_concepts(root, storage_options, shards) is not None
    for row in iter_rows(root, storage_options, shards):
        if row["status"] != "ok":
            summary["failed"].append({k: row[k] for k in ("shard", "key", "error")})
            continue
        rel = f"{safe_relpath(row['shard'])}/{safe_relpath(row['key'])}"
        if rel in written:
            raise ValueError(f"keys '{written[rel][1]}' and '{row['key']}' of shard "
                             f"'{row['shard']}' would both be exported to '{rel}/': expected "
                             f"keys that differ after making them safe file names")
        written[rel] = (row["shard"], row["key"])
        folder = f"{base}/{rel}"
        fs.makedirs(folder, exist_ok=True)
        anns = keep.apply(row["annotations"], row["width"], row["height"])
        lines = [METADATA_HEADER + (CATEGORY_COLUMNS if with_category else "")]
        for i, ann in enumerate(anns):
            fs.pipe_file(f"{folder}/{i}.png", mask_png(ann["segmentation"]))
            lines.append(metadata_row(i, ann) + (category_cells(ann) if with_category else ""))
        fs.pipe_file(f"{folder}/metadata.csv", "\n".join(lines).encode())
        summary["images"] += 1
        summary["annotations"] += len(anns)
        summary["filtered"] += len(row["annotations"] or []) - len(anns)
    return summary
