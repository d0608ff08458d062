"""Writing Parquet per shard, commit markers, and the cleanup that makes reruns exactly-once.

Layout under the output root:
    {root}/{shard}/{shard}-{first key}.parquet   one file per written batch of the shard
    {root}/{shard}/_stats.json                   the commit marker, written last by the driver
Readers (pyarrow, DuckDB, Polars) skip files starting with "_".
"""

from __future__ import annotations

import json
import re
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import MASK_SCHEMA, embedding_schema, image_rows, tally_columns

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


def masks_table(batch: dict[str, Any], include_image: bool = False) -> pa.Table:
    """Sample rows of one shard -> the mask table (schema.MASK_SCHEMA): one row per image,
    `annotations` a list of SA-1B annotation structs (COCO RLE segmentation, XYWH bbox)."""
    ok = batch["status"] == "ok"
    hw = np.asarray(batch["orig_hw"], dtype=np.int32).reshape(-1, 2)
    ann_type = MASK_SCHEMA.field("annotations").type
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
        pa.array([list(a) if o else None for a, o in zip(batch["annotations"], ok, strict=True)],
                 ann_type),
        pa.array(batch["status"].tolist(), pa.string()),
        pa.array([e or None for e in batch["error"]], pa.string()),
    ]
    return pa.Table.from_arrays(cols, schema=MASK_SCHEMA)


TABLES = {"embeddings": embedding_table, "masks": masks_table}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]


def write_batch(batch: dict[str, np.ndarray], root: str, storage_options: dict | None = None,
                include_image: bool = False, table: str = "embeddings"
                ) -> dict[str, np.ndarray]:
    """Ray Data map_batches: write each shard's sample rows of the batch to one Parquet file;
    return the tallies (schema.TALLY_DTYPES): one per written part (rows, ok, failed, bytes)
    and one per end row (the shard's sample count, error and skipped members)."""
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
            table_ = TABLES[table](part, include_image)
            first = min(part["key"].tolist())
            path = f"{base}/{shard}/{shard}-{_safe(first)}.parquet"
            fs.makedirs(f"{base}/{shard}", exist_ok=True)
            with fs.open(path, "wb") as f:
                pq.write_table(table_, f, compression="snappy")
            n_ok = int((part["status"] == "ok").sum())
            tallies.append({"shard": shard, "rows": len(images), "ok": n_ok,
                            "failed": len(images) - n_ok, "bytes": fs.size(path)})
        for i in np.flatnonzero(of_shard & ~samples):
            tallies.append({"shard": shard, "is_end": True,
                            "shard_count": int(batch["shard_count"][i]),
                            "shard_error": str(batch["shard_error"][i]),
                            "skipped_members": int(batch["skipped_members"][i])})
    return tally_columns(tallies)


def committed_shards(root: str, storage_options: dict | None = None) -> set[str]:
    """Names of the shards under `root` that have a commit marker."""
    fs, base = _fs(root, storage_options)
    if not fs.exists(base):
        return set()
    markers = fs.glob(f"{base}/*/{COMMIT_MARKER}")
    return {m.rstrip("/").split("/")[-2] for m in markers}


def clear_shard(root: str, shard: str, storage_options: dict | None = None) -> None:
    """Remove a shard's partial output (files of an interrupted run)."""
    fs, base = _fs(root, storage_options)
    path = f"{base}/{shard}"
    if fs.exists(path):
        fs.rm(path, recursive=True)


def commit_shard(root: str, shard: str, stats: dict, storage_options: dict | None = None) -> None:
    """Write the shard's `_stats.json`, last: from now on reruns skip the shard."""
    fs, base = _fs(root, storage_options)
    fs.makedirs(f"{base}/{shard}", exist_ok=True)
    fs.pipe_file(f"{base}/{shard}/{COMMIT_MARKER}", json.dumps(stats, indent=1).encode())
