"""Reading an auto-label (mask) dataset back: committed shards only, streamed file by file.

A dataset is the output root of `samdata autolabel` (layout in operators/shards/write.py). Only
shards with a commit marker are read, so the files of an interrupted run never leak into an
export; `shards` narrows the read to an inclusive name range.
"""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow.parquet as pq

from ..shards.decode import decode_image
from ..shards.listing import Shard, select_shards
from ..shards.read import Sample, iter_shard
from ..shards.schema import MASK_SCHEMA
from ..shards.write import committed_shards

MASK_COLUMNS = tuple(MASK_SCHEMA.names)


def dataset_files(root: str, storage_options: dict | None = None, shards: str | None = None
                  ) -> list[str]:
    """Parquet files of the committed shards under `root`, in shard then file order.
    Raises FileNotFoundError when there is no committed shard (naming the root)."""
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    names = select_shards(list(committed_shards(root, storage_options)), shards)
    if not names:
        raise FileNotFoundError(
            f"expected committed shards (commit markers in '{root.rstrip('/')}.samdata') "
            f"under '{root}'"
            f"{' in range ' + shards if shards else ''}, got none")
    files = []
    for name in names:
        files += sorted(p for p in fs.glob(f"{base}/{name}/*.parquet")
                        if not p.rsplit("/", 1)[-1].startswith("_"))
    return files


def iter_rows(root: str, storage_options: dict | None = None, shards: str | None = None,
              columns: tuple[str, ...] = MASK_COLUMNS) -> Iterator[dict]:
    """One dict per image row of the committed shards, holding `columns` (None for a column
    a file written before it existed lacks, e.g. `image_sha256`)."""
    fs, _ = fsspec.core.url_to_fs(root, **(storage_options or {}))
    for path in dataset_files(root, storage_options, shards):
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            have = [c for c in columns if c in parquet.schema_arrow.names]
            absent = {c: None for c in columns if c not in have}
            for batch in parquet.iter_batches(batch_size=256, columns=have):
                for row in batch.to_pylist():
                    yield {**row, **absent} if absent else row


def find_row(root: str, storage_options: dict | None = None, image_id: int | None = None,
             key: str | None = None) -> dict:
    """The row of one image, by `image_id` or `key`; KeyError naming it when absent."""
    if (image_id is None) == (key is None):
        raise ValueError("expected exactly one of image_id and key")
    for row in iter_rows(root, storage_options):
        if (image_id is not None and row["image_id"] == image_id) or \
                (key is not None and row["key"] == key):
            return row
    what = f"image_id {image_id}" if image_id is not None else f"key '{key}'"
    raise KeyError(f"expected an image with {what} in '{root}', got none")


def load_source_image(row: dict, storage_options: dict | None = None) -> np.ndarray:
    """uint8 HxWx3 RGB: the image of a dataset row, read again from its source shard by key
    (`source_uri` is `{tar or folder url}#{member}`)."""
    url = row["source_uri"].split("#", 1)[0]
    shard = Shard.from_url(row["shard"], url)
    for sample in iter_shard(shard, storage_options):
        if isinstance(sample, Sample) and sample.key == row["key"]:
            if sample.image is None:
                raise FileNotFoundError(f"expected an image for key '{row['key']}' in '{url}', "
                                        f"got {sample.error or 'none'}")
            return decode_image(sample.image)
    raise FileNotFoundError(f"expected key '{row['key']}' in '{url}', got no such member")
