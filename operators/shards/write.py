"""Writing Parquet per shard, commit markers, and the bookkeeping that makes reruns exactly-once.

Layout (shards/layout.py):
    {root}/{shard}/{shard}-{first key}-{digest}.parquet   one file per written batch of the shard
    {root}.samdata/commits/{shard}.json   the commit marker, written last by the driver
The dataset folder holds nothing but Parquet, so every reader opens it as it is.

A part's name ends in a digest of the keys it holds (`part_name`): two parts of different
samples never share a name, however long or alike their keys, and a retried write of the same
batch replaces its own file. The commit marker lists its parts with their rows and bytes; a
shard counts as committed only while every listed part is there at its size
(`committed_shards`), so a part lost after the commit makes a rerun redo the shard.

Every file appears whole or not at all: on a local disk it is written under a hidden temporary
name and renamed; on an object store a PUT is atomic. Transient write failures are retried
(storage.read_retries / retry_backoff_s); a part that still cannot be written makes the
shard's tally say so, and the driver leaves the shard uncommitted. A part file, once there, is
complete: a rerun keeps the parts of an uncommitted shard and processes only the samples that
are not in them (`existing_parts`).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import StorageConfig
from ..everything.coco_rle import finish_annotations
from .layout import LEGACY_MARKER, commit_marker, legacy_marker, meta_root
from .resumable import StorageUnavailable, with_retries
from .schema import (
    CONCEPT_SCHEMA,
    HIGH_RES_COLUMNS,
    MASK_SCHEMA,
    SEGMENT_SCHEMA,
    embedding_schema,
    image_rows,
    tally_columns,
)

COMMIT_MARKER = "commits/{shard}.json"  # under the output's .samdata folder (layout.py)


def _fs(root: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(root, **(storage_options or {}))


def tensor_array(values: np.ndarray, valid: np.ndarray) -> pa.ExtensionArray:
    """BxC..  numpy -> Arrow `fixed_shape_tensor` array, null where not `valid`."""
    shape = list(values.shape[1:])
    size = int(np.prod(shape))
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    storage = pa.FixedSizeListArray.from_arrays(flat, size, mask=pa.array(~valid))
    ext_type = pa.fixed_shape_tensor(flat.type, shape)
    return pa.ExtensionArray.from_storage(ext_type, storage)


def pair_array(values: np.ndarray, valid: np.ndarray) -> pa.FixedSizeListArray:
    """int Bx2 numpy -> Arrow fixed_size_list<int32>[2], null where not `valid`."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.int32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, 2, mask=pa.array(~valid))


def image_id_array(ids: np.ndarray) -> pa.Array:
    """int B numpy, -1 for none -> Arrow int64, null where negative."""
    ids = np.asarray(ids, dtype=np.int64)
    return pa.array(ids, pa.int64(), mask=ids < 0)


def content_column(batch: dict[str, Any]) -> pa.Array:
    """The rows' `image_sha256` (null where a row has none, or the batch has no such field)."""
    values = batch.get("image_sha256")
    n = len(batch["key"])
    return pa.array([None] * n if values is None else [v or None for v in values], pa.string())


def embedding_table(batch: dict[str, Any], include_image: bool) -> pa.Table:
    """Sample rows of one shard -> the embeddings table (schema.embedding_schema), with the
    high-res columns when the rows carry them (the Embedder adds them for output.high_res)."""
    ok = batch["status"] == "ok"
    embedding = tensor_array(batch["embedding"], ok)
    cols = [
        image_id_array(batch["image_id"]),
        pa.array(batch["key"].tolist(), pa.string()),
        pa.array(batch["shard"].tolist(), pa.string()),
        pa.array(batch["source_uri"].tolist(), pa.string()),
        pa.array(batch["model"].tolist(), pa.string()),
        pa.array([s or None for s in batch["checkpoint_sha256"]], pa.string()),
        pair_array(batch["orig_hw"], ok),
        pair_array(batch["input_hw"], ok),
        embedding,
        pa.array(batch["status"].tolist(), pa.string()),
        pa.array([e or None for e in batch["error"]], pa.string()),
        content_column(batch),
    ]
    if include_image:
        cols.append(pa.array([bytes(b) if o else None
                              for b, o in zip(batch["image_jpeg"], ok, strict=True)],
                             pa.binary()))
    high_res = None
    if HIGH_RES_COLUMNS[0] in batch:
        maps = [tensor_array(batch[c], ok) for c in HIGH_RES_COLUMNS]
        cols += maps
        high_res = [m.type.shape for m in maps]
    schema = embedding_schema(embedding.type.value_type, embedding.type.shape, include_image,
                              high_res)
    return pa.Table.from_arrays(cols, schema=schema)


def masks_table(batch: dict[str, Any], include_image: bool = False,
                schema: pa.Schema = MASK_SCHEMA) -> pa.Table:
    """Sample rows of one shard -> the mask table (schema.MASK_SCHEMA): one row per image,
    `annotations` a list of SA-1B annotation structs (COCO RLE segmentation, XYWH bbox).
    schema: SEGMENT_SCHEMA for `samdata segment` (the structs also hold the prompt)."""
    ok = batch["status"] == "ok"
    hw = np.asarray(batch["orig_hw"], dtype=np.int32).reshape(-1, 2)
    ann_type = schema.field("annotations").type
    _check_annotation_fields(batch["annotations"], ann_type.value_type)
    cols = [
        image_id_array(batch["image_id"]),
        pa.array(batch["key"].tolist(), pa.string()),
        pa.array(batch["shard"].tolist(), pa.string()),
        pa.array(batch["source_uri"].tolist(), pa.string()),
        pa.array(hw[:, 1], pa.int32(), mask=~ok),
        pa.array(hw[:, 0], pa.int32(), mask=~ok),
        pa.array(batch["model"].tolist(), pa.string()),
        pa.array([s or None for s in batch["checkpoint_sha256"]], pa.string()),
        pa.array(batch["settings"].tolist(), pa.string()),
        # the auto-labeler leaves segmentations as counts: COCO strings are built here, on a
        # CPU worker, not on the model actor's thread
        pa.array([list(a) if o else None for a, o in zip(finish_annotations(
            batch["annotations"]), ok, strict=True)], ann_type),
        pa.array(batch["status"].tolist(), pa.string()),
        pa.array([e or None for e in batch["error"]], pa.string()),
        content_column(batch),
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _check_annotation_fields(rows, struct: pa.StructType) -> None:
    """ValueError when the first annotation of a row has a field the table's struct lacks
    (Arrow would drop it without a word: a concept label's category written as a
    class-agnostic one)."""
    names = {struct.field(i).name for i in range(struct.num_fields)}
    for anns in rows:
        if anns is None or len(anns) == 0:
            continue
        extra = set(anns[0]) - names
        if extra:
            raise ValueError(f"expected annotation fields {sorted(names)}, got also "
                             f"{sorted(extra)}: write them with the table that declares "
                             f"them (concept labels: concepts_table)")


def segments_table(batch: dict[str, Any], include_image: bool = False) -> pa.Table:
    """Sample rows of one shard -> the segment table (schema.SEGMENT_SCHEMA)."""
    return masks_table(batch, include_image, SEGMENT_SCHEMA)


def concepts_table(batch: dict[str, Any], include_image: bool = False) -> pa.Table:
    """Sample rows of one shard -> the concept-label table (schema.CONCEPT_SCHEMA: the
    annotation structs also hold category_id, category and score)."""
    return masks_table(batch, include_image, CONCEPT_SCHEMA)


TABLES = {"embeddings": embedding_table, "masks": masks_table, "segments": segments_table,
          "concepts": concepts_table}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]


def key_bytes(key: str) -> bytes:
    """A key's bytes as the tar held them (surrogate escapes of a non-UTF-8 name kept)."""
    return key.encode("utf-8", "surrogateescape")


def part_name(shard: str, keys: list[str]) -> str:
    """The file name of the part holding `keys`: readable prefix (shard, first key cut to 60
    safe characters) and a 16-hex digest of every key, so that parts of different samples
    never collide, and the same batch written twice lands on one file."""
    ordered = sorted(keys)
    digest = hashlib.sha256(b"\0".join(key_bytes(k) for k in ordered)).hexdigest()[:16]
    return f"{_safe(shard)}-{_safe(ordered[0])}-{digest}.parquet"


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def write_file(fs, path: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Write `data` to `path` so that the file appears whole or not at all (local: a hidden
    temporary name renamed into place; object stores: one PUT), retrying transient failures.
    Raises StorageUnavailable when it keeps failing."""
    storage = storage or StorageConfig()
    folder, name = path.rsplit("/", 1)

    def put() -> bytes:
        fs.makedirs(folder, exist_ok=True)
        if _is_local(fs):
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                fs.pipe_file(tmp, data)
                fs.mv(tmp, path)
            except BaseException:
                _remove_quietly(fs, tmp)  # never leave a hidden temporary file behind
                raise
        else:
            fs.pipe_file(path, data)
        return b""

    with_retries(f"'{path}'", put, storage, verb="write")


def _remove_quietly(fs, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except Exception:  # noqa: BLE001 - the failure being reported is the write's
        pass


def write_batch(batch: dict[str, np.ndarray], root: str, storage_options: dict | None = None,
                include_image: bool = False, table: str = "embeddings",
                storage: StorageConfig | None = None) -> dict[str, np.ndarray]:
    """Ray Data map_batches: write each shard's sample rows of the batch to one Parquet file;
    return the tallies (schema.TALLY_DTYPES): one per written part (rows, ok, failed, bytes;
    `shard_unavailable` when the part could not be written) and one per end row (the shard's
    sample count, error, skipped members, and why it could not be read)."""
    fs, base = _fs(root, storage_options)
    tallies: list[dict[str, Any]] = []
    samples = image_rows(batch)
    for shard in sorted(set(batch["shard"].tolist())):
        of_shard = batch["shard"] == shard
        images = np.flatnonzero(of_shard & samples)
        if len(images):
            # a run of rows is a view (no copy of the embeddings), scattered rows a gather
            rows = (slice(images[0], images[-1] + 1)
                    if images[-1] - images[0] + 1 == len(images) else images)
            part = {k: v[rows] for k, v in batch.items()}
            sink = pa.BufferOutputStream()
            pq.write_table(TABLES[table](part, include_image), sink, compression="snappy")
            data = sink.getvalue().to_pybytes()
            name = part_name(shard, part["key"].tolist())
            path = f"{base}/{shard}/{name}"
            n_ok = int((part["status"] == "ok").sum())
            masks = (sum(0 if a is None else len(a) for a in part["annotations"])
                     if "annotations" in part else 0)
            tally = {"shard": shard, "rows": len(images), "ok": n_ok,
                     "failed": len(images) - n_ok, "bytes": len(data), "part": name,
                     "masks": masks}
            try:
                write_file(fs, path, data, storage)
            except StorageUnavailable as e:
                tally = {"shard": shard, "shard_unavailable": str(e)}
            tallies.append(tally)
        for i in np.flatnonzero(of_shard & ~samples):
            tallies.append({"shard": shard, "is_end": True,
                            "shard_count": int(batch["shard_count"][i]),
                            "shard_error": str(batch["shard_error"][i]),
                            "skipped_members": int(batch["skipped_members"][i]),
                            "member_counts": str(batch["member_counts"][i]),
                            "shard_unavailable": str(batch["shard_unavailable"][i]),
                            "piece": int(batch["piece"][i])})
    return tally_columns(tallies)


@dataclass
class ExistingParts:
    """What an uncommitted shard already holds from an earlier run: the keys of its complete
    part files, their counts (rows, ok, failed, bytes) and each part's rows and bytes."""

    keys: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    parts: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {rows, bytes}

    @property
    def rows(self) -> int:
        return len(self.keys)


def output_contents(root: str, storage_options: dict | None = None
                    ) -> tuple[set[str], set[str]]:
    """(shard folders under `root`, shards with a commit marker), from two listings: so that
    a run over many shards asks storage about each shard only when it has something there
    (existing_parts' `present`)."""
    fs, base = _fs(root, storage_options)
    meta = f"{meta_root(base)}/commits"
    found: list[set[str]] = []
    for folder, suffix in ((base, ""), (meta, ".json")):
        fs.invalidate_cache(folder)
        try:
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
        except FileNotFoundError:
            names = set()
        found.append({n[: len(n) - len(suffix)] for n in names if n.endswith(suffix)})
    return found[0], found[1]


def existing_parts(root: str, shard: str, storage_options: dict | None = None,
                   present: tuple[set[str], set[str]] | None = None) -> ExistingParts:
    """Read the part files of an uncommitted shard (only their key, status and shard columns)
    and remove what cannot be trusted (hidden temporary files of an interrupted write,
    unreadable parts, rows of another shard, a second copy of a key, a stale commit marker),
    so that the shard holds each of its samples at most once. present: output_contents(root)
    listed beforehand (a shard in neither set has nothing to read or remove)."""
    fs, base = _fs(root, storage_options)
    folder = f"{base}/{shard}"
    found = ExistingParts()
    if present is not None and shard not in present[0] and shard not in present[1]:
        return found
    marker = commit_marker(base, shard)
    if fs.exists(marker):
        fs.rm(marker)  # the marker of a shard found incomplete: it no longer speaks for it
    if not fs.exists(folder):
        return found
    seen: set[str] = set()
    for path in sorted(fs.ls(folder, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name == LEGACY_MARKER:
            fs.rm(path)  # the marker of a shard found incomplete: it no longer speaks for it
            continue
        if name.startswith(".") or not name.endswith(".parquet"):
            fs.rm(path)  # a temporary file of an interrupted write
            continue
        try:
            with fs.open(path, "rb") as f:
                cols = pq.read_table(f, columns=["key", "status", "shard"])
        except Exception:  # noqa: BLE001 - a part that cannot be read is redone
            fs.rm(path)
            continue
        keys = cols.column("key").to_pylist()
        if set(cols.column("shard").to_pylist()) != {shard} or seen.intersection(keys):
            fs.rm(path)  # another shard's rows, or a sample counted twice: never keep
            continue
        seen.update(keys)
        ok = sum(s == "ok" for s in cols.column("status").to_pylist())
        size = fs.size(path)
        found.keys += keys
        found.ok += ok
        found.failed += len(keys) - ok
        found.bytes += size
        found.parts[name] = {"rows": len(keys), "bytes": size}
    return found


def _marker_parts(stats: dict) -> dict[str, dict[str, int]] | None:
    """The `parts` a commit marker lists, or None for a marker written before markers listed
    them (trusted as it is)."""
    parts = stats.get("parts")
    return parts if isinstance(parts, dict) else None


def missing_parts(listed: dict[str, dict[str, int]], present: dict[str, int]) -> list[str]:
    """Names of the listed parts that are absent from `present` (name -> bytes on storage) or
    have another size than the marker says."""
    return sorted(n for n, p in listed.items() if present.get(n) != p.get("bytes"))


def _present(fs, folder: str) -> dict[str, int]:
    """name -> size of the files in a shard folder, as storage has them now (not a listing
    cached earlier: the parts were written by other processes)."""
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries
            if e.get("type") != "directory"}


def verify_shard(root: str, shard: str, storage_options: dict | None = None,
                 deep: bool = False) -> list[str]:
    """What is wrong with a committed shard against its marker ([] when it is whole): parts
    missing or of another size, and with `deep`, parts whose Parquet row count differs from
    the marker's. A shard without a marker is one problem ("not committed")."""
    fs, base = _fs(root, storage_options)
    folder = f"{base}/{shard}"
    stats = read_marker(fs, base, shard)
    if stats is None:
        return [f"shard '{shard}' is not committed (no {commit_marker(base, shard)})"]
    listed = _marker_parts(stats)
    if listed is None:
        return []
    problems = [f"part '{n}' listed by the marker is missing or changed"
                for n in missing_parts(listed, _present(fs, folder))]
    if deep and not problems:
        for name, p in listed.items():
            with fs.open(f"{folder}/{name}", "rb") as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            if rows != p.get("rows"):
                problems.append(f"part '{name}' holds {rows} rows, the marker says "
                                f"{p.get('rows')}")
    return problems


def read_marker(fs, base: str, shard: str) -> dict | None:
    """The commit marker of `shard` (or its legacy one), or None when it has none."""
    for path in (commit_marker(base, shard), legacy_marker(base, shard)):
        try:
            return json.loads(fs.cat_file(path))
        except FileNotFoundError:
            continue
    return None


def committed_shards(root: str, storage_options: dict | None = None) -> set[str]:
    """Names of the shards under `root` that have a commit marker whose listed parts are all
    there at their size (a shard whose part went missing is not committed: a rerun redoes
    it)."""
    fs, base = _fs(root, storage_options)
    meta = meta_root(base)
    fs.invalidate_cache(base)
    fs.invalidate_cache(meta)
    markers = {p.rstrip("/").rsplit("/", 1)[-1][: -len(".json")]: p
               for p in fs.glob(f"{meta}/commits/*.json")}
    if fs.exists(base):
        for p in fs.glob(f"{base}/*/{LEGACY_MARKER}"):
            markers.setdefault(p.rstrip("/").split("/")[-2], p)
    if not markers or not fs.exists(base):
        return set()
    # one listing of the whole output for the sizes, not one per shard
    present: dict[str, dict[str, int]] = {}
    for path, info in fs.find(base, detail=True).items():
        folder, name = path.rstrip("/").rsplit("/", 1)
        present.setdefault(folder.rsplit("/", 1)[-1], {})[name] = int(info.get("size") or 0)
    done = set()
    for shard, m in markers.items():
        try:
            listed = _marker_parts(json.loads(fs.cat_file(m)))
        except (ValueError, OSError):
            continue  # an unreadable marker commits nothing
        if listed is None or not missing_parts(listed, present.get(shard, {})):
            done.add(shard)
    return done


def commit_shard(root: str, shard: str, stats: dict, storage_options: dict | None = None,
                 storage: StorageConfig | None = None) -> None:
    """Write the shard's commit marker, last and whole: from now on reruns skip the shard.
    `stats["parts"]` (name -> {rows, bytes}) must all be in the shard folder at their size, and
    their rows must add up to `stats["images"]`; otherwise nothing is written and
    StorageUnavailable says which part is missing."""
    fs, base = _fs(root, storage_options)
    folder = f"{base}/{shard}"
    listed = stats.get("parts") or {}
    rows = sum(p["rows"] for p in listed.values())
    if rows != stats.get("images"):
        raise StorageUnavailable(f"shard '{shard}': its parts hold {rows} rows, expected "
                                 f"{stats.get('images')}")
    missing = missing_parts(listed, _present(fs, folder))
    if missing:
        raise StorageUnavailable(f"shard '{shard}': part(s) {missing[:3]} are not in '{folder}'"
                                 f" as written")
    write_file(fs, commit_marker(base, shard), json.dumps(stats, indent=1).encode(), storage)
