"""The export formats of `samdata export`, by name: each a function (root, out,
storage_options, out_storage_options, shards, keep, images) -> summary dict with at least
images, annotations, filtered and failed."""

from __future__ import annotations

from collections.abc import Callable

from .export import export_coco, export_sa1b
from .export_hf import export_hf
from .export_masks import export_masks
from .export_yolo import export_yolo

EXPORTERS: dict[str, Callable[..., dict]] = {
    "sa1b": export_sa1b,
    "coco": export_coco,
    "yolo": export_yolo,
    "masks": export_masks,
    "hf": export_hf,  # embedding datasets, for Hugging Face datasets
}

# what each writes, for the CLI's summary line
WRITES = {
    "sa1b": "per-image SA-1B JSON files under",
    "coco": "COCO instances to",
    "yolo": "a YOLO segment dataset in",
    "masks": "mask PNGs and metadata.csv per image under",
    "hf": "Parquet with the embedding as nested lists (Hugging Face datasets) under",
}
