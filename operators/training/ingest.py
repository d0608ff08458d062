"""CPU ingest of `samdata distill`: shards of an embedding corpus and/or of the image corpus ->
training rows, on Ray Data's CPU tasks, so the trainer only moves tensors to its device.

One task per shard (a `flat_map`, as the sharded jobs read), which:
- reads the committed embedding parts of the shard (`embedding`, `input_hw`, `orig_hw`,
  `image_jpeg` when the embed job stored it), skipping rows whose status is not ok;
- when it must (no `image_jpeg`, or stage 2 needs the SA-1B json), streams the source shard and
  joins it by key (the parts are indexed by key first; a few parts are held at a time);
- decodes the image and runs the student's own preprocessing (`prepare_image`);
- for stage 2, picks instances from the json's annotations and renders their masks into the
  prompt frame at the loss resolution, with their boxes in the prompt frame.

Row fields (`TRAIN_FIELDS`), all numeric so `iter_torch_batches` stacks them (validation rows
add the ground truth as RLE text, read with `iter_batches`):
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from models.transforms import longest_side_shape

from ..config import StorageConfig
from ..shards.decode import DecodeError, decode_image_for
from ..shards.layout import commit_marker
from ..shards.listing import IMAGE_EXTENSIONS, Shard, list_shards, select_shards
from ..shards.prepare import model_skeleton
from ..shards.read import Sample, ShardEnd, image_id_from, iter_shard
from ..shards.schema import HIGH_RES_COLUMNS
from ..shards.write import committed_shards, read_marker
from .pairing import embedding_frame, valid_cells

TRAIN_FIELDS: dict[str, str] = {
    "image_id": "int64: SA-1B id (json), else the last number in the key; -1: none",
    "pixels": "the student's prepared input SxSx3 (uint8; float32 for EfficientSAM)",
    "input_hw": "int32 (2,): the student's resized, unpadded size",
    "orig_hw": "int32 (2,): the original image size",
    "target": "teacher embedding CxHxW as stored (float16/32); teacher runs only",
    "target_high_res_0": "SAM 2 teachers, corpus embedded with output.high_res: the teacher's "
                         "stride-4 high-res map as stored (32x256x256 at full size)",
    "target_high_res_1": "likewise its stride-8 map (64x128x128)",
    "valid": "int32 (2,): rows, cols of the teacher grid holding image, not padding",
    "masks": "uint8 NxTxT: instance masks in the prompt frame at the loss size T (stage 2)",
    "boxes": "float32 Nx4: instance boxes XYXY in the prompt frame (stage 2)",
    "areas": "float32 N: the annotations' `area` (original pixels); 0 pads (stage 2)",
    "count": "int32: instances present (the rest of N pads)",
    "rles": "validation rows only: JSON list of the instances' COCO RLE at the original size "
            "(size, counts), bbox (XYWH) and area",
}

_PART_CACHE = 4  # embedding parts held at once while joining a shard with its source


@dataclass(frozen=True)
class CorpusInfo:
    """What an embedding corpus holds: the model that wrote it and its weights' digest (None:
    random weights), the embedding shape and dtype, whether rows carry `image_jpeg` and the
    high-res maps of a SAM 2 teacher (`high_res_0`, `high_res_1`: embed output.high_res)."""

    model: str
    checkpoint_sha256: str | None
    shape: tuple[int, ...]
    dtype: str
    has_image: bool
    has_high_res: bool = False


@dataclass(frozen=True)
class TrainShard:
    """One shard of training data: its embedding parts (empty without embeddings), its source
    shard (url "" when not needed) and its count of usable rows (-1: unknown)."""

    name: str
    files: tuple[str, ...] = ()
    url: str = ""
    container: str = "tar"
    rows: int = -1

    def item(self) -> dict[str, Any]:
        """The Ray Data item for `read_training_rows`."""
        d = asdict(self)
        d["files"] = list(self.files)
        return d


@dataclass(frozen=True)
class IngestSpec:
    """What the rows of a dataset carry (one spec for training, one for validation)."""

    student: str  # registry name: its preprocessing and prompt frame
    teacher: str | None = None  # registry name: its grid for `valid` (with teacher_embedding)
    teacher_embedding: bool = False  # rows carry `target` and `valid`
    high_res: bool = False  # rows carry `target_high_res_0/1` (the corpus's high-res maps)
    instances: int = 0  # N instances a row (0: none, stage 1)
    mask_size: int = 256  # T
    max_mask_area: float = 1.0  # drop instances covering more of the image (training: 0.9)
    ground_truth_rles: bool = False  # validation: `rles` at the original size
    render_masks: bool = True  # `masks`, `boxes`, `areas` (training; validation needs rles)
    random_instances: bool = True  # a fresh random subset each read (validation: the first N)
    prefer_source_image: bool = False  # decode the original from the source shard
    fmt: str = "auto"
    max_image_pixels: int = 100_000_000

    @property
    def needs_source(self) -> bool:
        """Whether the source shard must be read (annotations, or images not in the rows)."""
        return self.instances > 0 or self.prefer_source_image


# -- finding the data (driver) ------------------------------------------------------------------


def _fs(url: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


def _parts(fs, base: str, shard: str) -> list[str]:
    return sorted(p for p in fs.glob(f"{base}/{shard}/*.parquet")
                  if not p.rsplit("/", 1)[-1].startswith("_"))


def _full(fs, path: str, root: str) -> str:
    return fs.unstrip_protocol(path) if "://" in root else path


def embedding_shards(root: str, storage_options: dict | None = None,
                     shard_range: str | None = None, limit: int | None = None
                     ) -> list[TrainShard]:
    """The committed shards of an embedding corpus (a `samdata embed` output), in natural name
    order, narrowed to `shard_range` and `limit`, with their Parquet parts and ok-row counts
    (from the commit markers). Raises FileNotFoundError naming `root` when none is committed."""
    fs, base = _fs(root, storage_options)
    base = base.rstrip("/")
    names = select_shards(list(committed_shards(root, storage_options)), shard_range, limit)
    if not names:
        raise FileNotFoundError(
            f"data.embeddings: expected committed shards (markers like "
            f"'{commit_marker(base, 'SHARD')}') "
            f"under '{root}'{' in range ' + shard_range if shard_range else ''}, got none")
    out = []
    for name in names:
        stats = read_marker(fs, base, name) or {}
        files = tuple(_full(fs, p, root) for p in _parts(fs, base, name))
        out.append(TrainShard(name=name, files=files, rows=int(stats.get("ok", -1))))
    return out


def embedding_info(shards: list[TrainShard], storage_options: dict | None = None) -> CorpusInfo:
    """CorpusInfo from the first part holding an ok row. Raises ValueError when the parts are
    not an embeddings table or hold no ok row."""
    for shard in shards:
        for path in shard.files:
            fs, p = _fs(path, storage_options)
            with fs.open(p, "rb") as f:
                table = pq.read_table(f, columns=["model", "checkpoint_sha256", "status"])
            ok = [i for i, s in enumerate(table.column("status").to_pylist()) if s == "ok"]
            if not ok:
                continue
            with fs.open(p, "rb") as f:
                schema = pq.read_schema(f)
            kind = schema.field("embedding").type
            if not isinstance(kind, pa.FixedShapeTensorType):
                raise ValueError(f"data.embeddings: expected `embedding` as an Arrow "
                                 f"fixed_shape_tensor in '{path}', got {kind}")
            row = table.slice(ok[0], 1).to_pylist()[0]
            return CorpusInfo(model=row["model"], checkpoint_sha256=row["checkpoint_sha256"],
                              shape=tuple(kind.shape), dtype=str(kind.value_type),
                              has_image="image_jpeg" in schema.names,
                              has_high_res=all(c in schema.names for c in HIGH_RES_COLUMNS))
    raise ValueError("data.embeddings: expected at least one row with status ok, got none")


def attach_sources(shards: list[TrainShard], corpus: list[str] | None,
                   storage_options: dict | None = None) -> list[TrainShard]:
    """Give each embedding shard its source shard: the corpus shard of the same name when
    `corpus` is given, else the one its rows' `source_uri` names. Raises ValueError naming a
    shard without a source."""
    found = {s.name: s for s in list_shards(corpus, storage_options=storage_options)} \
        if corpus else {}
    out = []
    for s in shards:
        if corpus:
            if s.name not in found:
                raise ValueError(f"data.corpus: expected a shard named '{s.name}' (the "
                                 f"embeddings have it), got none among {len(found)} shards")
            src = found[s.name]
            out.append(TrainShard(s.name, s.files, src.url, src.container, s.rows))
            continue
        url = ""
        for path in s.files:
            fs, p = _fs(path, storage_options)
            with fs.open(p, "rb") as f:
                uris = pq.read_table(f, columns=["source_uri"]).column("source_uri")
            if len(uris):
                url = uris[0].as_py().split("#", 1)[0]
                break
        if not url:
            raise ValueError(f"data.corpus: expected the source of shard '{s.name}' (set "
                             "data.corpus), got none in its rows")
        src = Shard.from_url(s.name, url)
        out.append(TrainShard(s.name, s.files, src.url, src.container, s.rows))
    return out


def count_images(shard: Shard) -> int:
    """Image members of a local shard (tar headers only: the tar is seeked, not read), -1 for
    a remote one (counting would read it whole)."""
    if "://" in shard.url:
        return -1
    if shard.container == "folder":
        return sum(1 for p in Path(shard.url).rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS)
    with tarfile.open(shard.url) as tar:
        return sum(1 for m in tar.getmembers()
                   if m.isfile() and posixpath.splitext(m.name)[1].lower() in IMAGE_EXTENSIONS)


def corpus_shards(urls: list[str], storage_options: dict | None = None,
                  shard_range: str | None = None, limit: int | None = None
                  ) -> list[TrainShard]:
    """The shards of an image corpus (no embeddings), with their image counts when local."""
    return [TrainShard(name=s.name, url=s.url, container=s.container, rows=count_images(s))
            for s in list_shards(urls, shard_range, limit, storage_options)]


def split_shards(shards: list[TrainShard], val_shards: int
                 ) -> tuple[list[TrainShard], list[TrainShard]]:
    """(training, validation): the last `val_shards` shards validate. Raises ValueError
    naming data.val_shards when no training shard would be left."""
    if val_shards >= len(shards):
        raise ValueError(f"data.val_shards: expected fewer than the {len(shards)} shards found "
                         f"(at least one must train), got {val_shards}")
    cut = len(shards) - val_shards
    return shards[:cut], shards[cut:]


# -- rows (CPU tasks) ---------------------------------------------------------------------------


def frame_hw(model: torch.nn.Module, orig_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """(h, w) of the image inside a size x size square in `model`'s prompt frame: the whole
    square for a stretching model, else the longest side resized to `size`."""
    if embedding_frame(model) == "stretch":
        return size, size
    return longest_side_shape(int(orig_hw[0]), int(orig_hw[1]), size)


def mask_to_frame(mask: np.ndarray, model: torch.nn.Module, size: int) -> np.ndarray:
    """bool HxW mask at the original size -> uint8 size x size (0/1) in `model`'s prompt frame
    (resized as the image is, padded bottom/right with 0), PIL bilinear with antialiasing on
    reduction, thresholded at half."""
    h, w = frame_hw(model, mask.shape, size)
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)
    out = np.zeros((size, size), np.uint8)
    out[:h, :w] = np.asarray(img) >= 128
    return out


def decode_rle(segmentation: dict) -> np.ndarray:
    """SA-1B / COCO RLE {"size": [h, w], "counts": str} -> bool HxW."""
    return mask_utils.decode({"size": list(segmentation["size"]),
                              "counts": segmentation["counts"]}).astype(bool)


def pick_instances(annotations: list[dict], orig_hw: tuple[int, int], spec: IngestSpec,
                   rng: np.random.Generator) -> list[dict]:
    """The annotations used for one image: area >= 1 and at most `max_mask_area` of the
    image, then up to `instances` of them (a random subset, or the first ones)."""
    limit = spec.max_mask_area * orig_hw[0] * orig_hw[1]
    keep = [a for a in annotations
            if a.get("segmentation") and 1 <= float(a.get("area", 0)) <= limit]
    if len(keep) > spec.instances:
        if spec.random_instances:
            keep = [keep[i] for i in sorted(rng.choice(len(keep), spec.instances,
                                                       replace=False))]
        else:
            keep = keep[: spec.instances]
    return keep


def instance_fields(annotations: list[dict], orig_hw: tuple[int, int], spec: IngestSpec,
                    rng: np.random.Generator) -> dict[str, Any] | None:
    """Stage-2 row fields of one image (`masks`, `boxes`, `areas`, `count`, and `rles` for
    validation), or None when no annotation is usable."""
    student = model_skeleton(spec.student)
    chosen = pick_instances(annotations, orig_hw, spec, rng)
    if not chosen:
        return None
    out: dict[str, Any] = {"count": np.int32(len(chosen))}
    if spec.ground_truth_rles:
        out["rles"] = json.dumps([{"size": list(a["segmentation"]["size"]),
                                   "counts": a["segmentation"]["counts"],
                                   "bbox": [float(v) for v in a["bbox"]],
                                   "area": float(a["area"])} for a in chosen])
    if not spec.render_masks:
        return out
    n, t = spec.instances, spec.mask_size
    masks = np.zeros((n, t, t), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    areas = np.zeros(n, np.float32)
    for i, ann in enumerate(chosen):
        mask = decode_rle(ann["segmentation"])
        if mask.shape != tuple(orig_hw):
            raise ValueError(f"expected masks of the image's size {tuple(orig_hw)}, got "
                             f"{mask.shape} (annotation {ann.get('id')})")
        masks[i] = mask_to_frame(mask, student, t)
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes[i] = student.transform_boxes(torch.tensor([[x, y, x + w, y + h]]),
                                           tuple(orig_hw)).numpy()[0]
        areas[i] = float(ann["area"])
    out.update(masks=masks, boxes=boxes, areas=areas)
    return out


def training_row(image: np.ndarray, orig_hw: tuple[int, int], image_id: int,
                 spec: IngestSpec, embedding: dict[str, Any] | None,
                 annotations: list[dict] | None, rng: np.random.Generator
                 ) -> dict[str, Any] | None:
    """One training row (TRAIN_FIELDS) from a decoded image (the original, or the teacher's
    resized input), the embedding row ("embedding", "input_hw") and the annotations; None
    when a stage-2 image has no usable instance."""
    student = model_skeleton(spec.student)
    pixels, input_hw = student.prepare_image(image)
    row: dict[str, Any] = {
        "image_id": np.int64(image_id),
        "pixels": pixels,
        "input_hw": np.asarray(input_hw, np.int32),
        "orig_hw": np.asarray(orig_hw, np.int32),
    }
    if spec.teacher_embedding:
        teacher = model_skeleton(spec.teacher)
        grid = tuple(embedding["embedding"].shape[-2:])
        row["target"] = embedding["embedding"]
        row["valid"] = np.asarray(valid_cells(tuple(embedding["input_hw"]),
                                              teacher.image_size, grid), np.int32)
        if spec.high_res:
            for c in HIGH_RES_COLUMNS:
                row[f"target_{c}"] = embedding[c]
    if spec.instances:
        fields = instance_fields(annotations or [], orig_hw, spec, rng)
        if fields is None:
            return None
        row.update(fields)
    return row


class _Parts:
    """The ok rows of a shard's embedding parts by key, loading a part when one of its keys is
    asked for and holding at most _PART_CACHE parts."""

    COLUMNS = ("key", "status", "embedding", "input_hw", "orig_hw", "image_id")

    def __init__(self, files: list[str], storage_options: dict | None,
                 with_image: bool, high_res: bool = False) -> None:
        self.files, self.opts = files, storage_options
        self.columns = list(self.COLUMNS) + (["image_jpeg"] if with_image else [])
        self.tensors = ["embedding"] + (list(HIGH_RES_COLUMNS) if high_res else [])
        self.columns += self.tensors[1:]
        self.where: dict[str, tuple[int, int]] = {}
        for i, path in enumerate(files):
            table = self._read(path, ["key", "status"])
            for j, (k, s) in enumerate(zip(table.column("key").to_pylist(),
                                           table.column("status").to_pylist(), strict=True)):
                if s == "ok":
                    self.where[k] = (i, j)
        self.cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def _read(self, path: str, columns: list[str]) -> pa.Table:
        fs, p = _fs(path, self.opts)
        with fs.open(p, "rb") as f:
            return pq.read_table(f, columns=columns)

    def _part(self, i: int) -> dict[str, Any]:
        if i not in self.cache:
            table = self._read(self.files[i], self.columns)
            self.cache[i] = {
                **{c: _tensor(table.column(c)) for c in self.tensors},
                **{c: table.column(c).to_pylist() for c in self.columns
                   if c not in self.tensors},
            }
            while len(self.cache) > _PART_CACHE:
                self.cache.popitem(last=False)
        self.cache.move_to_end(i)
        return self.cache[i]

    def get(self, key: str) -> dict[str, Any] | None:
        """The embedding row of `key` ("embedding" CxHxW, "input_hw", "orig_hw", "image_id",
        "image_jpeg" when read), or None when the shard has no ok row for it."""
        if key not in self.where:
            return None
        i, j = self.where[key]
        part = self._part(i)
        return {c: part[c][j] for c in part}

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every ok row, part by part."""
        for i in range(len(self.files)):
            part = self._part(i)
            for j, status in enumerate(part["status"]):
                if status == "ok":
                    yield {c: part[c][j] for c in part}
            self.cache.pop(i, None)


def _tensor(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed_shape_tensor column -> numpy BxC..., nulls (error rows) as zeros."""
    arr = column.combine_chunks()
    if arr.null_count:
        shape = arr.type.shape
        storage = arr.storage.fill_null(pa.scalar([0] * int(np.prod(shape)),
                                                  arr.storage.type))
        arr = pa.ExtensionArray.from_storage(arr.type, storage)
    return arr.to_numpy_ndarray()


def _decode_jpeg(data: bytes, max_pixels: int) -> np.ndarray:
    return decode_image_for(data, max_image_pixels=max_pixels)[0]


def read_training_rows(item: dict[str, Any], spec: IngestSpec,
                       storage_options: dict | None = None,
                       storage: StorageConfig | None = None) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: a TrainShard item -> its training rows (TRAIN_FIELDS of `spec`).

    Rows that cannot train are left out: embedding rows whose status is not ok, samples that
    do not decode, stage-2 images without a usable annotation."""
    shard = TrainShard(**{**item, "files": tuple(item["files"])})
    rng = np.random.default_rng() if spec.random_instances else np.random.default_rng(0)
    with_image = not spec.prefer_source_image and not spec.needs_source
    parts = (_Parts(list(shard.files), storage_options, with_image, spec.high_res)
             if shard.files else None)
    if not spec.needs_source:
        # Everything is in the embedding rows: the teacher's resized input as JPEG
        for emb in parts.rows():
            try:
                image = _decode_jpeg(emb["image_jpeg"], spec.max_image_pixels)
            except DecodeError:
                continue
            row = training_row(image, tuple(emb["orig_hw"]), emb["image_id"] or -1, spec,
                               emb, None, rng)
            if row is not None:
                yield row
        return
    # Stream the source shard, joined by key with the embedding rows
    source = Shard(name=shard.name, url=shard.url, container=shard.container)
    for sample in iter_shard(source, storage_options, fmt=spec.fmt, storage=storage):
        if isinstance(sample, ShardEnd) or not isinstance(sample, Sample):
            continue
        if sample.error or sample.image is None:
            continue
        emb = parts.get(sample.key) if parts is not None else None
        if parts is not None and emb is None:
            continue  # no ok embedding for this image
        try:
            image, orig_hw = decode_image_for(sample.image, max_image_pixels=spec.max_image_pixels)
        except DecodeError:
            continue
        annotations = (sample.meta or {}).get("annotations") or []
        image_id = image_id_from(sample.key, sample.meta) or -1
        row = training_row(image, tuple(orig_hw), image_id, spec, emb, annotations, rng)
        if row is not None:
            yield row


def check_sources(shards: list[TrainShard], storage_options: dict | None = None,
                  storage: StorageConfig | None = None, fmt: str = "auto",
                  probe: int = 4) -> None:
    """Refuse, before any training, an embedding corpus whose source shards are missing or
    are not the images its rows were made from.

    Every shard with a source (url) must exist (FileNotFoundError naming the first missing
    ones). Then the first `probe` ok rows of the first such shard that carry `image_sha256`
    are compared with the sha256 of the same keys' bytes in its source (the source is read
    only until those keys are found); a difference raises ValueError naming the key."""
    with_source = [s for s in shards if s.url]
    missing = []
    for s in with_source:
        fs, p = _fs(s.url, storage_options)
        if not fs.exists(p):
            missing.append(f"'{s.name}' at '{s.url}'")
    if missing:
        raise FileNotFoundError(
            f"data.corpus: expected the source shards of the embeddings, got {len(missing)} of "
            f"{len(with_source)} missing: {', '.join(missing[:3])}")
    target = next((s for s in with_source if s.files), None)
    if target is None:
        return
    wanted: dict[str, str] = {}
    for path in target.files:
        fs, p = _fs(path, storage_options)
        with fs.open(p, "rb") as f:
            schema = pq.read_schema(f)
        if "image_sha256" not in schema.names:
            return  # written before rows carried their images' sha256
        with fs.open(p, "rb") as f:
            table = pq.read_table(f, columns=["key", "status", "image_sha256"])
        for key, status, sha in zip(*(table.column(c).to_pylist() for c in
                                      ("key", "status", "image_sha256")), strict=True):
            if status == "ok" and sha and len(wanted) < probe:
                wanted[key] = sha
        if len(wanted) >= probe:
            break
    if not wanted:
        return
    source = Shard(name=target.name, url=target.url, container=target.container)
    for sample in iter_shard(source, storage_options, fmt=fmt, storage=storage):
        if not isinstance(sample, Sample) or sample.key not in wanted:
            continue
        got = hashlib.sha256(sample.image).hexdigest() if sample.image else ""
        if got != wanted.pop(sample.key):
            raise ValueError(
                f"data.corpus: the embeddings of '{target.name}/{sample.key}' were made from "
                f"other image bytes than those at '{target.url}' (sha256 differs): expected "
                f"the corpus the teacher embedded")
        if not wanted:
            return
    raise ValueError(f"data.corpus: expected samples {sorted(wanted)[:3]} in '{target.url}' "
                     f"(the embeddings have them), got none")
