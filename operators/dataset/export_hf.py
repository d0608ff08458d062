"""Exporting an embedding dataset for Hugging Face `datasets`: the same rows and columns, the
`embedding` column as nested fixed-size lists instead of Arrow's `fixed_shape_tensor` (which
`datasets` has no dtype for), so that `load_dataset("parquet", data_dir=out)` opens it and
`.with_format("numpy")` gives each embedding as a CxHxW array again.

Layout: `{out}/{shard}/{part}.parquet`, one file per part of the committed shards; nothing
else is written there (the folder opens in every reader, as the dataset itself does).
"""

from __future__ import annotations

import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from ..shards.write import committed_shards
from .export import safe_relpath


def nested_lists(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A fixed_shape_tensor column of shape (C, H, W) -> fixed_size_list<...>[C] of
    fixed_size_list[H] of fixed_size_list[W] (nulls kept)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not isinstance(array.type, pa.FixedShapeTensorType):
        raise ValueError(f"expected `embedding` as an Arrow fixed_shape_tensor, got "
                         f"{array.type}")
    storage = array.storage
    values = storage.flatten()
    for size in reversed(array.type.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    mask = storage.is_null() if storage.null_count else None
    return pa.FixedSizeListArray.from_arrays(values, array.type.shape[0], mask=mask)


def export_hf(root: str, out: str, storage_options: dict | None = None,
              out_storage_options: dict | None = None, shards: str | None = None,
              keep=None, images: str | None = None) -> dict:
    """Write the committed parts of the embedding dataset `root` under `out` with the
    embedding as nested lists; returns {"images", "annotations": 0, "filtered": 0, "failed"}.
    `keep` and `images` (mask filters, image copies) do not apply and are refused."""
    from ..shards.listing import select_shards

    if images is not None or (keep is not None and keep.active):
        raise ValueError("export --format hf: expected an embedding dataset without --images "
                         "or mask filters, got one of them")
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    ofs, obase = fsspec.core.url_to_fs(out, **(out_storage_options or {}))
    names = select_shards(list(committed_shards(root, storage_options)), shards)
    if not names:
        raise FileNotFoundError(f"expected committed shards under '{root}', got none")
    rows = failed = 0
    failed_rows: list[dict] = []
    for shard in names:
        for path in sorted(fs.glob(f"{base.rstrip('/')}/{shard}/*.parquet")):
            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
            if "embedding" not in table.column_names:
                raise ValueError(f"export --format hf: expected an embedding dataset (an "
                                 f"`embedding` column) in '{path}', got columns "
                                 f"{table.column_names[:8]}")
            i = table.column_names.index("embedding")
            table = table.set_column(i, "embedding", nested_lists(table.column(i)))
            status = table.column("status").to_pylist()
            rows += len(status)
            bad = [k for k, s in zip(table.column("key").to_pylist(), status, strict=True)
                   if s != "ok"]
            failed += len(bad)
            failed_rows += [{"shard": shard, "key": k} for k in bad[:20]]
            target = f"{obase.rstrip('/')}/{safe_relpath(shard)}/{posixpath.basename(path)}"
            ofs.makedirs(posixpath.dirname(target), exist_ok=True)
            with ofs.open(target, "wb") as f:
                pq.write_table(table, f, compression="snappy")
    return {"images": rows - failed, "annotations": 0, "filtered": 0, "failed": failed_rows}
