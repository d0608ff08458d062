"""Where the prompts of `samdata segment` come from (prompts.source), each read into prompt dicts
(operators/prompted/prompts.py) per image:

- sa1b: the sample's own json (SA-1B format), one prompt per annotation: its `bbox` (XYWH ->
  XYXY) and/or its `point_coords` (foreground points); `source_id` = the annotation's `id`.
- coco: a COCO instances JSON; an image's prompts are the `bbox`es of its annotations (XYWH ->
  XYXY), carrying `category_id`, the category's `name` and `score` when present; `source_id`
  = the annotation's `id`. Images are matched to sample keys by file name: `file_name` without
  its extension equal to the key, else their base names (a base name two images share is
  matched to neither).
- parquet: a dataset of one row per image, `key` (a sample key or a file name, matched as for
  coco), `boxes` (list of [x0, y0, x1, y1]), optional `points` (per prompt a list of [x, y]),
  `labels` (per prompt a list of 1/0, default all 1), `category` (per prompt a name or an
  integer id) and `score` (per prompt), e.g. a detector's output.

`prompts.use` picks the parts: "box", "point" or "box+point" (coco: "box" only).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

from ..config import PromptsConfig
from .prompts import make_prompt

_AMBIGUOUS = -1  # a base name several images share


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    """[x, y, w, h] -> [x0, y0, x1, y1]."""
    if len(bbox) != 4:
        raise ValueError(f"expected a bbox of 4 numbers (XYWH), got {list(bbox)!r:.80}")
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _stem(name: str) -> str:
    """A file name or key without folder and extension (`a/b/sa_1.jpg` -> `sa_1`)."""
    return posixpath.basename(name).split(".", 1)[0]


def _no_extension(name: str) -> str:
    """`a/b/sa_1.jpg` -> `a/b/sa_1` (the WebDataset key rule: up to the first dot of the file
    name)."""
    folder, base = posixpath.split(name)
    return posixpath.join(folder, base.split(".", 1)[0])


class KeyIndex:
    """Sample keys -> row numbers of a source, by full key, else by base name."""

    def __init__(self, names: Sequence[str], what: str) -> None:
        self.full: dict[str, int] = {}
        self.base: dict[str, int] = {}
        for row, name in enumerate(names):
            key = _no_extension(str(name))
            if key in self.full:
                raise ValueError(f"expected one entry per image in {what}, got '{name}' twice")
            self.full[key] = row
            stem = _stem(key)
            self.base[stem] = _AMBIGUOUS if stem in self.base else row

    def find(self, key: str) -> int | None:
        """The row of sample `key`, or None when the source has no such image."""
        row = self.full.get(key)
        if row is None:
            row = self.base.get(_stem(key))
        return None if row is None or row == _AMBIGUOUS else row


class CocoInstances:
    """A COCO instances JSON read for lookups by sample key: `data` (the whole file), `images`
    (its image list), `index` (sample key -> position in `images`) and `row_of` (image id ->
    position). Raises ValueError when `images` or `annotations` is missing (naming `path`)."""

    def __init__(self, path: str, storage_options: dict | None = None) -> None:
        with fsspec.open(path, "rb", **(storage_options or {})) as f:
            data = json.load(f)
        for part in ("images", "annotations"):
            if not isinstance(data.get(part), list):
                raise ValueError(f"expected a COCO instances JSON with `{part}` in '{path}', "
                                 f"got keys {sorted(data)[:8]}")
        self.path = path
        self.data = data
        self.images: list[dict] = data["images"]
        self.index = KeyIndex([img["file_name"] for img in self.images], f"'{path}' images")
        self.row_of = {img["id"]: row for row, img in enumerate(self.images)}


def sa1b_prompts(annotations: Sequence[Mapping], use: str = "box") -> list[dict]:
    """SA-1B annotations of one image -> one prompt per annotation (see the module docstring)."""
    out = []
    for n, ann in enumerate(annotations):
        if not isinstance(ann, Mapping):
            raise ValueError(f"expected annotation {n} as a JSON object, got {ann!r:.60}")
        try:
            box = xywh_to_xyxy(ann["bbox"]) if "box" in use else None
            points = ann["point_coords"] if "point" in use else []
            out.append(make_prompt(box, points, source_id=ann.get("id")))
        except KeyError as e:
            raise ValueError(f"expected {e} in annotation {n} (id {ann.get('id')}) for "
                             f"prompts.use {use!r}, got keys {sorted(ann)}") from e
        except (TypeError, ValueError) as e:
            raise ValueError(f"annotation {n} (id {ann.get('id')}): {e}") from e
    return out


class SA1BPrompts:
    """prompts.source sa1b: the prompts of a sample are in its row's `annotations_json`."""

    needs_annotations = True

    def __init__(self, use: str = "box") -> None:
        self.use = use

    def __call__(self, key: str, annotations_json: str) -> list[dict]:
        if not annotations_json:
            raise ValueError(f"expected an SA-1B json with `annotations` for '{key}' "
                             f"(prompts.source sa1b), got a sample without json")
        return sa1b_prompts(json.loads(annotations_json), self.use)


class CocoPrompts:
    """prompts.source coco: the boxes of a COCO instances JSON (see the module docstring)."""

    needs_annotations = False

    def __init__(self, path: str, storage_options: dict | None = None) -> None:
        coco = CocoInstances(path, storage_options)
        data, row_of, self.index = coco.data, coco.row_of, coco.index
        names = {c["id"]: c.get("name") for c in data.get("categories") or []}
        self.prompts: list[list[dict]] = [[] for _ in coco.images]
        for n, ann in enumerate(data["annotations"]):
            if ann.get("image_id") not in row_of:
                raise ValueError(f"expected annotations of listed images in '{path}', got "
                                 f"annotation {n} of image_id {ann.get('image_id')!r}")
            try:
                prompt = make_prompt(xywh_to_xyxy(ann["bbox"]),
                                     category_id=ann.get("category_id"),
                                     category=names.get(ann.get("category_id")),
                                     score=ann.get("score"), source_id=ann.get("id"))
            except (KeyError, ValueError) as e:
                raise ValueError(f"annotation {n} (id {ann.get('id')}) of '{path}': {e}") from e
            self.prompts[row_of[ann["image_id"]]].append(prompt)

    def __call__(self, key: str, annotations_json: str = "") -> list[dict] | None:
        row = self.index.find(key)
        return None if row is None else self.prompts[row]


class ParquetPrompts:
    """prompts.source parquet: one row of prompts per image (see the module docstring)."""

    needs_annotations = False
    COLUMNS = ("key", "boxes", "points", "labels", "category", "score")

    def __init__(self, path: str, use: str = "box", storage_options: dict | None = None
                 ) -> None:
        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        dataset = pads.dataset(root, filesystem=fs, format="parquet")
        names = set(dataset.schema.names)
        need = ["key"] + (["boxes"] if "box" in use else []) + (["points"] if "point" in use
                                                                else [])
        missing = [c for c in need if c not in names]
        if missing:
            raise ValueError(f"expected columns {need} in the prompts dataset '{path}' "
                             f"(prompts.use {use!r}), got {sorted(names)}")
        self.table: pa.Table = dataset.to_table(columns=[c for c in self.COLUMNS if c in names])
        self.use = use
        self.path = path
        self.index = KeyIndex(self.table.column("key").to_pylist(), f"'{path}' keys")

    def __call__(self, key: str, annotations_json: str = "") -> list[dict] | None:
        row = self.index.find(key)
        if row is None:
            return None
        values = {c: self.table.column(c)[row].as_py() for c in self.table.column_names}
        boxes = values.get("boxes") if "box" in self.use else None
        points = values.get("points") if "point" in self.use else None
        count = len(boxes if boxes is not None else points or [])
        per_prompt = {c: values.get(c) for c in ("labels", "category", "score")}
        for name, column in (("boxes", boxes), ("points", points), *per_prompt.items()):
            if column is not None and len(column) != count:
                raise ValueError(f"expected {count} entries of `{name}` for key '{key}' in "
                                 f"'{self.path}' (one per prompt), got {len(column)}")
        out = []
        for k in range(count):
            category = per_prompt["category"][k] if per_prompt["category"] else None
            numeric = isinstance(category, int)
            out.append(make_prompt(
                boxes[k] if boxes is not None else None,
                points[k] if points is not None else (),
                per_prompt["labels"][k] if per_prompt["labels"] and points is not None else None,
                category_id=category if numeric else None,
                category=None if numeric else category,
                score=per_prompt["score"][k] if per_prompt["score"] else None))
        return out


def load_prompt_source(prompts: PromptsConfig, storage_options: dict | None = None
                       ) -> SA1BPrompts | CocoPrompts | ParquetPrompts:
    """The prompt source of the `prompts` section: a callable (sample key, the row's
    annotations_json) -> the image's prompt dicts, or None when the source has no such image.
    `needs_annotations`: whether rows must carry their json's annotations."""
    if prompts.source == "sa1b":
        return SA1BPrompts(prompts.use)
    if prompts.path is None:
        raise ValueError(f"expected prompts.path for prompts.source {prompts.source}, got none")
    if prompts.source == "coco":
        return CocoPrompts(prompts.path, storage_options)
    return ParquetPrompts(prompts.path, prompts.use, storage_options)
