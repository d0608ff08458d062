"""Exporting a mask dataset in the Ultralytics YOLO segment format (the layout of the
Ultralytics segment-dataset documentation, which YOLO-seg training reads):

    {out}/data.yaml                       path (the dataset root), train and val (both
                                          `images`), nc and names ({class index: name})
    {out}/images/{shard}/{key}{ext}       each ok image, its original bytes (export_images.py)
    {out}/labels/{shard}/{key}.txt        one line per mask: `class x1 y1 x2 y2 ...`

A label file has the image's path with `images` -> `labels` and the extension -> `.txt`, as
Ultralytics derives it (a path part of a shard or key named `images` or `labels` becomes
`images_` / `labels_`, since Ultralytics replaces the last `/images/`). A line's polygon is the
outer outline of the mask's largest 8-connected piece along pixel edges (export_polygon.py:
its area is the piece's pixel count, holes filled), its vertices divided by the image width
and height (0..1, 6 decimals). Classes: the categories the labels carry (`category_id`,
`category`, as a `samdata segment` dataset has them; COCO export's ids) numbered 0.. in order
of first appearance; masks without one are the class "object" (an auto-label dataset has that
one class, 0). A concept-label dataset (its rows declare the job's concept list,
export.dataset_concepts) has class = category_id - 1 and `names` the whole list, the same
classes in every export of the job. An image without masks gets an empty label file (a
background image).

The summary counts `skipped` masks (no pixels: no polygon) and `multi_part` masks (more than
one piece: only the largest is written), beside images, annotations (lines), filtered and
failed as the other formats count them.
"""

from __future__ import annotations

import posixpath

import fsspec
import numpy as np
from pycocotools import mask as mask_utils

from .export import Categories, dataset_concepts, safe_relpath
from .export_filter import NO_FILTER, AnnotationFilter
from .export_images import copy_dataset_images
from .export_polygon import mask_polygon
from .maskset import iter_rows

_RESERVED = {"images": "images_", "labels": "labels_"}  # parts Ultralytics' paths rely on


def yolo_relpath(row: dict) -> str:
    """`{shard}/{key}` as a YOLO image path without extension (safe, no `images` part)."""
    rel = f"{safe_relpath(row['shard'])}/{safe_relpath(row['key'])}"
    return "/".join(_RESERVED.get(part, part) for part in rel.split("/"))


def decode_crop(segmentation: dict) -> tuple[np.ndarray, int, int]:
    """COCO RLE {size: [h, w], counts} -> (uint8 crop of the mask to its bounding box, the
    crop's x0, y0); the crop is 0x0 for an empty mask."""
    rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
    x, y, w, h = (int(round(v)) for v in mask_utils.toBbox(rle))
    if w == 0 or h == 0:
        return np.zeros((0, 0), np.uint8), 0, 0
    return mask_utils.decode(rle)[y:y + h, x:x + w], x, y


def polygon_line(segmentation: dict, cls: int) -> tuple[str | None, int]:
    """A mask's YOLO segment line `cls x1 y1 ...` (None for an empty mask) and its number of
    pieces."""
    h, w = segmentation["size"]
    crop, x0, y0 = decode_crop(segmentation)
    if crop.size == 0:
        return None, 0
    points, pieces = mask_polygon(crop)
    if points is None:
        return None, 0
    norm = (points + [x0, y0]) / [w, h]
    return f"{cls} " + " ".join(f"{v:.6f}" for v in norm.ravel()), pieces


def _root_for_yaml(out: str, fs: fsspec.AbstractFileSystem, base: str) -> str:
    """data.yaml `path`: the absolute local folder, or the URL of a remote one."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return base if "file" in protocols or "local" in protocols else fs.unstrip_protocol(base)


def export_yolo(root: str, out: str, storage_options: dict | None = None,
                out_storage_options: dict | None = None, shards: str | None = None,
                keep: AnnotationFilter = NO_FILTER, images: str | None = None) -> dict:
    """Write the YOLO segment dataset folder `out` (layout in the module docstring); returns
    {"images", "annotations", "skipped", "multi_part", "filtered", "failed", "image_files",
    "classes": {index: name}}. `images` must be None: the images go to `out/images`."""
    import yaml

    if images is not None:
        raise ValueError(f"expected no --images with the yolo format (its images go to "
                         f"OUT/images), got '{images}'")
    fs, base = fsspec.core.url_to_fs(out, **(out_storage_options or {}))
    # Images first: the label files take their names
    names = copy_dataset_images(root, f"{out.rstrip('/')}/images", storage_options,
                                out_storage_options, shards, relpath=yolo_relpath)
    summary = {"images": 0, "annotations": 0, "skipped": 0, "multi_part": 0, "filtered": 0,
               "failed": [], "image_files": len(names)}
    categories, index_of = Categories(), {}  # category id -> class index
    concepts = dataset_concepts(root, storage_options, shards)
    if concepts is not None:  # concept labels: class = category_id - 1, every concept named
        categories.declare(concepts)
        index_of = {cid: cid - 1 for cid in range(1, len(concepts) + 1)}
    made: set[str] = set()
    # Labels: one text file per image, one polygon line per mask
    for row in iter_rows(root, storage_options, shards):
        if row["status"] != "ok":
            summary["failed"].append({k: row[k] for k in ("shard", "key", "error")})
            continue
        anns = keep.apply(row["annotations"], row["width"], row["height"])
        summary["filtered"] += len(row["annotations"] or []) - len(anns)
        lines = []
        for ann in anns:
            cid = categories.id_of(ann)
            if concepts is not None and cid not in index_of:
                raise ValueError(f"expected category ids 1..{len(concepts)} (the dataset's "
                                 f"concepts), got {cid} in {row['shard']}/{row['key']}")
            cls = index_of.setdefault(cid, len(index_of))
            line, pieces = polygon_line(ann["segmentation"], cls)
            if line is None:
                summary["skipped"] += 1
                continue
            summary["multi_part"] += pieces > 1
            lines.append(line)
        rel = posixpath.splitext(names[(row["shard"], row["key"])])[0] + ".txt"
        path = f"{base}/labels/{rel}"
        folder = posixpath.dirname(path)
        if folder not in made:
            fs.makedirs(folder, exist_ok=True)
            made.add(folder)
        fs.pipe_file(path, "".join(line + "\n" for line in lines).encode())
        summary["images"] += 1
        summary["annotations"] += len(lines)
    # data.yaml: the dataset root, its image folder as train and val, the classes
    classes = {i: categories.names[cid] for cid, i in sorted(index_of.items(),
                                                              key=lambda kv: kv[1])} or \
        {0: "object"}
    data = {"path": _root_for_yaml(out, fs, base), "train": "images", "val": "images",
            "nc": len(classes), "names": classes}
    fs.pipe_file(f"{base}/data.yaml", yaml.safe_dump(data, sort_keys=False).encode())
    summary["classes"] = classes
    return summary
