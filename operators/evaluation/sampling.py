"""The evaluated images: a seeded sample of a corpus, and reading it (Ray Data flat_maps).

The sample is the `n` images of lowest score, a sample's score being a hash of (seed, shard,
key): the same seed picks the same images whatever the order the shards are read in, a larger
`n` keeps the smaller sample's images, and another seed draws another sample. Knowing the
lowest scores takes one pass over the shards' members without decoding (`census`); the second
pass (`read_selected`) decodes only the chosen images.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator
from typing import Any

from ..config import InputConfig, StorageConfig
from ..shards.prepare import model_skeleton, prepare_sample
from ..shards.read import Sample, iter_shard
from ..shards.schema import item_shard
from .binding import ImageFacts, image_facts


def sample_score(seed: int, shard: str, key: str) -> int:
    """A uniform 63-bit score of a sample (an Arrow int64): blake2b of (seed, shard, key)."""
    digest = hashlib.blake2b(f"{seed}\0{shard}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def facts_row(shard: str, part: Sample) -> dict[str, Any]:
    """The binding.ImageFacts of a sample as a row that crosses Ray: "height", "width" (-1:
    header unreadable), "sha256", "image_name", "record" (the json's `image` as JSON text, ""
    without one), "has_json"."""
    facts = image_facts(shard, part.key, part.image, part.image_name, part.meta)
    h, w = facts.hw or (-1, -1)
    return {"height": h, "width": w, "sha256": facts.sha256, "image_name": part.image_name or "",
            "record": json.dumps(facts.record) if facts.record is not None else "",
            "has_json": part.meta is not None}


def row_facts(row: dict[str, Any]) -> ImageFacts:
    """The ImageFacts of a census or read_annotations row (see facts_row)."""
    hw = None if int(row["height"]) < 0 else (int(row["height"]), int(row["width"]))
    return ImageFacts(shard=row["shard"], key=row["key"], hw=hw, sha256=row["sha256"],
                      image_name=row["image_name"] or None,
                      record=json.loads(row["record"]) if row["record"] else None)


def census(item: dict[str, Any], input_cfg: InputConfig, seed: int,
           storage_options: dict | None = None, storage: StorageConfig | None = None
           ) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: {"shard", "url", "container"} -> {"shard", "key", "score"} plus the
    sample's facts (facts_row: header size, sha256, json record; the image is not decoded)
    per sample of the shard."""
    shard = item_shard(item)
    for part in iter_shard(shard, storage_options, fmt=input_cfg.format, storage=storage):
        if isinstance(part, Sample):
            yield {"shard": shard.name, "key": part.key,
                   "score": sample_score(seed, shard.name, part.key),
                   **facts_row(shard.name, part)}


def choose_sample(rows: Iterable[dict[str, Any]], n: int) -> dict[str, list[str]]:
    """Census rows -> the `n` of lowest score (all when there are fewer), as {shard: sorted
    keys}."""
    if n < 1:
        raise ValueError(f"expected a sample size >= 1, got {n}")
    chosen: dict[str, list[str]] = {}
    for row in heapq.nsmallest(n, rows, key=lambda r: (r["score"], r["shard"], r["key"])):
        chosen.setdefault(row["shard"], []).append(row["key"])
    return {shard: sorted(keys) for shard, keys in chosen.items()}


def read_selected(item: dict[str, Any], model_name: str, input_cfg: InputConfig,
                  storage_options: dict | None = None, storage: StorageConfig | None = None
                  ) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: {"shard", "url", "container", "keys" (a list, or None for every
    sample)} -> a prepared row ("original" mode: the decoded image, with its json's
    `annotations_json`) per chosen sample; no end row. model_name: its `input_hw`."""
    model = model_skeleton(model_name)
    shard = item_shard(item)
    keys = None if item.get("keys") is None else frozenset(item["keys"])
    for part in iter_shard(shard, storage_options, fmt=input_cfg.format, storage=storage):
        if isinstance(part, Sample) and (keys is None or part.key in keys):
            yield prepare_sample(part, shard.name, model, input_cfg.max_image_pixels,
                                 include_image=False, mode="original",
                                 include_annotations=True)


def read_annotations(item: dict[str, Any], fmt: str = "auto",
                     storage_options: dict | None = None, storage: StorageConfig | None = None
                     ) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: {"shard", "url", "container", "keys"} -> {"shard", "key",
    "annotations_json" ("" without a json)} plus the sample's facts (facts_row) per chosen
    sample (images are not decoded). fmt: the shard format (input.format)."""
    shard = item_shard(item)
    keys = frozenset(item["keys"])
    for part in iter_shard(shard, storage_options, fmt=fmt, storage=storage):
        if isinstance(part, Sample) and part.key in keys:
            yield {"shard": shard.name, "key": part.key,
                   "annotations_json": "" if part.meta is None else json.dumps(
                       part.meta.get("annotations") or []),
                   **facts_row(shard.name, part)}
