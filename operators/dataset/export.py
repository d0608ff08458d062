"""Exporting a mask dataset: per-image SA-1B JSON files, or one COCO instances JSON.

SA-1B: `{out}/{shard}/{key}.json` = {"image": {image_id, width, height, file_name},
"annotations": [the row's annotations]}, the layout of the files inside an SA-1B tar.

COCO: one instances file that `pycocotools.coco.COCO` loads and `COCOeval` accepts as ground
truth (or, via `COCO.loadRes(data["annotations"])`, as results: every annotation has a
`score`: the score its prompt carried (`samdata segment`, e.g. a detector's), else its
predicted IoU). Categories: those the annotations carry (`category_id` as it is, with its
`category` name; a name alone gets the lowest free id): a concept-label dataset's
(schema.CONCEPT_SCHEMA) under the ids of its job's concept list, every concept of that list
listed, also one without an instance (the rows' `settings` declare it, `dataset_concepts`), so
the ids are the same in every shard and rerun; a `samdata segment` dataset's those its prompts
carried. One id named two ways is refused. Masks without one, as every everything-mode
auto-label, are in the category "object" (class-agnostic: such a dataset has that one
category, id 1). Annotation ids run from 1 (COCOeval reads id 0
as "unmatched"); image ids are the SA-1B image ids when every row has a distinct one, else 1..N
in dataset order. Each image entry also names its sample (`samdata_key`, `samdata_shard`,
`samdata_source_uri`) and the sha256 of its bytes (`samdata_sha256`), so that `samdata
evaluate` can check that the file is the ground truth of the images it evaluates. The file is
written in two streaming passes (images, then annotations, then
the categories they used), so memory does not grow with the dataset.

Every file lands inside `out`: a key's path parts are kept as folders, but ".." and "." parts,
a leading "/", backslashes and control characters become "_" (`safe_relpath`); two keys that
would land on one file are refused, naming both.

Rows whose status is not "ok" have no masks: they are left out of both formats and reported
(`failed`, with key and error) in the returned summary and in COCO `info`.

Both take the export filters (`keep`, export_filter.py: what they drop is counted as
`filtered`) and `images`: a folder to copy the images into (export_images.py:
`{images}/{shard}/{key}{ext}`, the original bytes). With it, COCO `file_name` is that path
relative to `images` (the image root a COCO reader is given, as detectron2's
`register_coco_instances(name, {}, json, image_root)` takes it), and an SA-1B record's
`file_name` is the image's path relative to the folder of its JSON file (with `images` =
`out`, the image lies beside its JSON, as in an SA-1B tar). Without it, `file_name` is the
key's base name + ".jpg", as before.

The YOLO and per-mask PNG formats are export_yolo.py and export_masks.py; exporters.py names
them all.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterator

import fsspec

from ..shards.schema import settings_concepts
from .export_filter import NO_FILTER, AnnotationFilter
from .export_images import copy_dataset_images, copy_images
from .maskset import iter_rows

COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def file_name(key: str) -> str:
    """SA-1B image file name of a sample key (`sa_1` -> `sa_1.jpg`)."""
    return posixpath.basename(key) + ".jpg"


def safe_relpath(name: str) -> str:
    """A key or shard name as a relative path that stays inside its folder: "/" separates
    folders; empty parts are dropped; ".", ".." and characters no file system takes well
    (backslash, control characters, ":" ) become "_"."""
    parts = []
    for part in name.split("/"):
        if not part:
            continue
        part = re.sub(r"[\\\x00-\x1f\x7f:]", "_", part)
        parts.append("_" * len(part) if part in (".", "..") else part)
    return "/".join(parts) or "_"


def sa1b_record(row: dict, annotations: list[dict] | None = None,
                image_name: str | None = None) -> dict:
    """A mask-dataset row -> the SA-1B per-image JSON object (`annotations`: those to write,
    default the row's; `image_name`: its `file_name`, default file_name(key))."""
    return {
        "image": {"image_id": row["image_id"], "width": row["width"], "height": row["height"],
                  "file_name": image_name or file_name(row["key"])},
        "annotations": (row["annotations"] or []) if annotations is None else annotations,
    }


def relative_url(target: str, folder: str, storage_options: dict | None = None) -> str:
    """The path of file URL `target` relative to folder URL `folder` (both on one storage);
    ValueError when they are on different storages."""
    fs_t, t = fsspec.core.url_to_fs(target, **(storage_options or {}))
    fs_f, f = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    if fs_t.protocol != fs_f.protocol:
        raise ValueError(f"expected --images on the storage of --out, got '{target}' and "
                         f"'{folder}'")
    return posixpath.relpath("/" + t.lstrip("/"), "/" + f.lstrip("/"))


def export_sa1b(root: str, out: str, storage_options: dict | None = None,
                out_storage_options: dict | None = None, shards: str | None = None,
                keep: AnnotationFilter = NO_FILTER, images: str | None = None) -> dict:
    """Write one SA-1B JSON per ok image under `out` (and its image under `images`, when
    given); returns {"images", "annotations", "filtered", "failed": [{shard, key, error}]}
    (+ "image_files" with `images`)."""
    fs, base = fsspec.core.url_to_fs(out, **(out_storage_options or {}))
    summary = {"images": 0, "annotations": 0, "filtered": 0, "failed": []}
    names = {} if images is None else copy_dataset_images(root, images, storage_options,
                                                          out_storage_options, shards)
    if images is not None:
        summary["image_files"] = len(names)
    made: set[str] = set()
    written: dict[str, tuple[str, str]] = {}  # relative path -> (shard, key) that wrote it
    for row in iter_rows(root, storage_options, shards):
        if row["status"] != "ok":
            summary["failed"].append({k: row[k] for k in ("shard", "key", "error")})
            continue
        rel = f"{safe_relpath(row['shard'])}/{safe_relpath(row['key'])}.json"
        if rel in written:
            raise ValueError(f"keys '{written[rel][1]}' and '{row['key']}' of shard "
                             f"'{row['shard']}' would both be exported as '{rel}': expected "
                             f"keys that differ after making them safe file names")
        written[rel] = (row["shard"], row["key"])
        path = f"{base}/{rel}"
        folder = path.rsplit("/", 1)[0]
        if folder not in made:
            fs.makedirs(folder, exist_ok=True)
            made.add(folder)
        anns = keep.apply(row["annotations"], row["width"], row["height"])
        image_name = None
        if images is not None:
            image = f"{images.rstrip('/')}/{names[(row['shard'], row['key'])]}"
            image_name = relative_url(image, f"{out.rstrip('/')}/{rel.rsplit('/', 1)[0]}",
                                      out_storage_options)
        fs.pipe_file(path, json.dumps(sa1b_record(row, anns, image_name)).encode())
        summary["images"] += 1
        summary["annotations"] += len(anns)
        summary["filtered"] += len(row["annotations"] or []) - len(anns)
    return summary


class ConceptList:
    """The one concept list of a dataset, collected from its rows' `settings` (each distinct
    settings text parsed once)."""

    def __init__(self) -> None:
        self.concepts: list[str] | None = None
        self._where = ""
        self._seen: set[str] = set()

    def add(self, row: dict) -> None:
        """Take the concepts row {shard, key, settings} declares; ValueError when they differ
        from another row's (its category ids would mean other names)."""
        settings = row.get("settings")
        if not settings or settings in self._seen:
            return
        self._seen.add(settings)
        concepts = settings_concepts(settings)
        if concepts is None:
            return
        if self.concepts is None:
            self.concepts, self._where = concepts, f"{row['shard']}/{row['key']}"
        elif concepts != self.concepts:
            raise ValueError(f"expected one concept list in the dataset (category ids are "
                             f"positions in it), got {self.concepts} at {self._where} and "
                             f"{concepts} at {row['shard']}/{row['key']}")


def dataset_concepts(root: str, storage_options: dict | None = None, shards: str | None = None
                     ) -> list[str] | None:
    """The concept list the rows of a concept-label dataset declare in `settings`
    (schema.CONCEPTS_SETTING; category_id = position + 1), or None when no row declares one
    (everything mode, segment). ValueError when two rows declare different lists."""
    found = ConceptList()
    for row in iter_rows(root, storage_options, shards, columns=("shard", "key", "settings")):
        found.add(row)
    return found.concepts


def _image_ids(root: str, storage_options: dict | None, shards: str | None
               ) -> tuple[list[dict], list[dict], bool, list[str] | None]:
    """First pass: the ok rows' (shard, key, image_id, width, height), the failed rows,
    whether the SA-1B image ids can serve as COCO ids (all present and distinct), and the
    dataset's concept list (dataset_concepts)."""
    images, failed = [], []
    concepts = ConceptList()
    cols = ("image_id", "key", "shard", "source_uri", "width", "height", "status", "error",
            "image_sha256", "settings")
    for row in iter_rows(root, storage_options, shards, columns=cols):
        concepts.add(row)
        del row["settings"]  # the same text on every row: not kept per image
        if row["status"] == "ok":
            images.append(row)
        else:
            failed.append({k: row[k] for k in ("shard", "key", "error")})
    ids = [r["image_id"] for r in images]
    usable = all(i is not None for i in ids) and len(set(ids)) == len(ids)
    return images, failed, usable, concepts.concepts


class Categories:
    """The categories of an export, collected while its annotations stream by."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}  # id -> name
        self.by_name: dict[str, int] = {}  # ids given to names without an id

    def declare(self, concepts: list[str]) -> None:
        """Name the ids 1..N after a concept list (a concept-label dataset's), so that every
        concept is listed, also one without an annotation."""
        for cid, name in enumerate(concepts, start=1):
            self.id_of({"category_id": cid, "category": name})

    def id_of(self, ann: dict) -> int:
        """The category id of an annotation (see the module docstring)."""
        cid, name = ann.get("category_id"), ann.get("category")
        if cid is None:
            name = name or COCO_CATEGORY["name"]
            if name not in self.by_name:
                cid = 1
                while cid in self.names:
                    cid += 1
                self.by_name[name] = cid
                self.names[cid] = name
            return self.by_name[name]
        cid = int(cid)
        known = self.names.get(cid)
        if known is not None and cid in self.by_name.values() and known != name:
            raise ValueError(f"expected category id {cid} for one category, got it for "
                             f"'{known}' (a name without an id) and for '{name}'")
        if known is not None and name is not None and known != name:
            raise ValueError(f"expected one name per category id, got '{known}' and "
                             f"'{name}' for id {cid} (labels of two concept lists?)")
        self.names[cid] = name or known or str(cid)
        return cid

    def coco(self) -> list[dict]:
        """COCO `categories`, by id ("object" as the exporter always wrote it)."""
        return [dict(COCO_CATEGORY) if n == COCO_CATEGORY["name"] and i == COCO_CATEGORY["id"]
                else {"id": i, "name": n, "supercategory": n}
                for i, n in sorted(self.names.items())]


def _coco_annotations(root: str, storage_options: dict | None, shards: str | None,
                      id_of: dict[tuple[str, str], int], categories: Categories,
                      keep: AnnotationFilter, summary: dict) -> Iterator[dict]:
    """Second pass: COCO annotation dicts of every ok row that `keep` keeps (the others
    counted in summary["filtered"]), ids from 1; every other field of a row's annotation (a
    segment result's prompt too) is kept."""
    next_id = 1
    cols = ("key", "shard", "status", "annotations", "width", "height")
    for row in iter_rows(root, storage_options, shards, columns=cols):
        if row["status"] != "ok":
            continue
        image_id = id_of[(row["shard"], row["key"])]
        anns = keep.apply(row["annotations"], row["width"], row["height"])
        summary["filtered"] += len(row["annotations"] or []) - len(anns)
        for ann in anns:
            score = ann.get("score")
            yield {
                **{k: v for k, v in ann.items() if k not in ("id", "category_id", "score")},
                "id": next_id,
                "image_id": image_id,
                "category_id": categories.id_of(ann),
                "iscrowd": 0,
                "score": ann["predicted_iou"] if score is None else score,
            }
            next_id += 1


def export_coco(root: str, out: str, storage_options: dict | None = None,
                out_storage_options: dict | None = None, shards: str | None = None,
                keep: AnnotationFilter = NO_FILTER, images: str | None = None) -> dict:
    """Write the COCO instances JSON file `out` (and the images under `images`, when given);
    returns {"images", "annotations", "filtered", "failed"} (+ "image_files" with
    `images`)."""
    summary = {"filtered": 0}
    rows, failed, sa1b_ids, concepts = _image_ids(root, storage_options, shards)
    names = {} if images is None else copy_images(rows, images, storage_options,
                                                  out_storage_options)
    if images is not None:
        summary["image_files"] = len(names)
    id_of = {(r["shard"], r["key"]): (r["image_id"] if sa1b_ids else n + 1)
             for n, r in enumerate(rows)}
    info = {"description": f"samdata auto-labels exported from {root}",
            "failed_images": failed}
    count = 0
    categories = Categories()
    if concepts is not None:  # every concept of the job, under its stable id
        categories.declare(concepts)
    with fsspec.open(out, "w", **(out_storage_options or {})) as f:
        f.write('{"info": ' + json.dumps(info) + ', "licenses": [], "images": [')
        for n, r in enumerate(rows):
            f.write((", " if n else "") + json.dumps({
                "id": id_of[(r["shard"], r["key"])], "width": r["width"], "height": r["height"],
                "file_name": names.get((r["shard"], r["key"])) or file_name(r["key"]),
                "samdata_key": r["key"],
                "samdata_shard": r["shard"], "samdata_source_uri": r["source_uri"],
                "samdata_sha256": r["image_sha256"]}))
        f.write('], "annotations": [')
        for ann in _coco_annotations(root, storage_options, shards, id_of, categories, keep,
                                     summary):
            f.write((", " if count else "") + json.dumps(ann))
            count += 1
        f.write('], "categories": ' + json.dumps(categories.coco() or [COCO_CATEGORY]) + "}\n")
    return {"images": len(rows), "annotations": count, "failed": failed, **summary}
