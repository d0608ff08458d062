"""Writing Parquet per shard, commit markers, and the bookkeeping that makes reruns exactly-once.

Layout under the output root:
    {root}/{shard}/{shard}-{first key}.parquet   one file per written batch of the shard
    {root}/{shard}/_stats.json                   the commit marker, written last by the driver
Readers (pyarrow, DuckDB, Polars) skip files starting with "_" or ".".

Every file appears whole or not at all: on a local disk it is written under a hidden temporary
name and renamed; on an object store a PUT is atomic. Transient write failures are retried
(storage.read_retries / retry_backoff_s); a part that still cannot be written makes the
shard's tally say so, and the driver leaves the shard uncommitted. A part file, once there, is
complete: a rerun keeps the parts of an uncommitted shard and processes only the samples that
are not in them (`existing_parts`).
"""

from __future__ import annotations

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
from .resumable import StorageUnavailable, with_retries
from .schema import (
    MASK_SCHEMA,
    SEGMENT_SCHEMA,
    embedding_schema,
    image_rows,
    tally_columns,
)

COMMIT_MARKER = "_stats.json"


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


def embedding_table(batch: dict[str, Any], include_image: bool) -> pa.Table:
    """Sample rows of one shard -> the embeddings table (schema.embedding_schema)."""
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
    ]
    if include_image:
        cols.append(pa.array([bytes(b) if o else None
                              for b, o in zip(batch["image_jpeg"], ok, strict=True)],
                             pa.binary()))
    schema = embedding_schema(embedding.type.value_type, embedding.type.shape, include_image)
    return pa.Table.from_arrays(cols, schema=schema)


def masks_table(batch: dict[str, Any], include_image: bool = False,
                schema: pa.Schema = MASK_SCHEMA) -> pa.Table:
    """Sample rows of one shard -> the mask table (schema.MASK_SCHEMA): one row per image,
    `annotations` a list of SA-1B annotation structs (COCO RLE segmentation, XYWH bbox).
    schema: SEGMENT_SCHEMA for `samdata segment` (the structs also hold the prompt)."""
    ok = batch["status"] == "ok"
    hw = np.asarray(batch["orig_hw"], dtype=np.int32).reshape(-1, 2)
    ann_type = schema.field("annotations").type
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
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def segments_table(batch: dict[str, Any], include_image: bool = False) -> pa.Table:
    """Sample rows of one shard -> the segment table (schema.SEGMENT_SCHEMA)."""
    return masks_table(batch, include_image, SEGMENT_SCHEMA)


TABLES = {"embeddings": embedding_table, "masks": masks_table, "segments": segments_table}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]


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
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        else:
            fs.pipe_file(path, data)
        return b""

    with_retries(f"a write of '{path}'", put, storage)


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
            first = min(part["key"].tolist())
            path = f"{base}/{shard}/{shard}-{_safe(first)}.parquet"
            n_ok = int((part["status"] == "ok").sum())
            tally = {"shard": shard, "rows": len(images), "ok": n_ok,
                     "failed": len(images) - n_ok, "bytes": len(data)}
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
                            "shard_unavailable": str(batch["shard_unavailable"][i])})
    return tally_columns(tallies)


@dataclass
class ExistingParts:
    """What an uncommitted shard already holds from an earlier run: the keys of its complete
    part files and their counts (rows, ok, failed, bytes)."""

    keys: list[str] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    bytes: int = 0

    @property
    def rows(self) -> int:
        return len(self.keys)


def existing_parts(root: str, shard: str, storage_options: dict | None = None
                   ) -> ExistingParts:
    """Read the part files of an uncommitted shard (only their key, status and shard columns)
    and remove what cannot be trusted (hidden temporary files of an interrupted write,
    unreadable parts, rows of another shard, a second copy of a key), so that the shard holds
    each of its samples at most once."""
    fs, base = _fs(root, storage_options)
    folder = f"{base}/{shard}"
    found = ExistingParts()
    if not fs.exists(folder):
        return found
    seen: set[str] = set()
    for path in sorted(fs.ls(folder, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name == COMMIT_MARKER:
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
        found.keys += keys
        found.ok += ok
        found.failed += len(keys) - ok
        found.bytes += fs.size(path)
    return found


def committed_shards(root: str, storage_options: dict | None = None) -> set[str]:
    """Names of the shards under `root` that have a commit marker."""
    fs, base = _fs(root, storage_options)
    if not fs.exists(base):
        return set()
    markers = fs.glob(f"{base}/*/{COMMIT_MARKER}")
    return {m.rstrip("/").split("/")[-2] for m in markers}


def commit_shard(root: str, shard: str, stats: dict, storage_options: dict | None = None,
                 storage: StorageConfig | None = None) -> None:
    """Write the shard's `_stats.json`, last and whole: from now on reruns skip the shard."""
    fs, base = _fs(root, storage_options)
    write_file(fs, f"{base}/{shard}/{COMMIT_MARKER}", json.dumps(stats, indent=1).encode(),
               storage)
