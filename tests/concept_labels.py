"""Concept labels and a categorised COCO ground truth built from a sample corpus's own exact
masks, for the export and evaluate tests of concept labeling (no model: the rows are written
in the declared table, schema.CONCEPT_SCHEMA, as the concept labeler's writer writes them).

Each SA-1B annotation of an image gets a category by its index k within the image:
`category_of(k)` (even: "dog", odd: "cat") unless a test says otherwise."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from operators.shards.listing import Shard
from operators.shards.read import Sample, iter_shard


def category_of(k: int) -> str:
    """The category of a corpus's k-th annotation of an image."""
    return "dog" if k % 2 == 0 else "cat"


def samples(corpus: list[str]) -> list[tuple[Shard, list[Sample]]]:
    """The (shard, its samples) of local tar shard paths."""
    out = []
    for url in corpus:
        shard = Shard.from_url(url.rsplit("/", 1)[-1][:-4], url)
        out.append((shard, [s for s in iter_shard(shard) if isinstance(s, Sample)]))
    return out


def ground_truth_json(path: Path, corpus: list[str], categories: list[dict],
                      name_to_id: dict[str, int] | None = None,
                      category: Callable[[int], str] = category_of) -> dict:
    """Write a COCO instances JSON of the corpus's annotations at `path` (the images with their
    sha256 as `samdata_sha256`, file_name = key + ".jpg"); each annotation's category_id is
    name_to_id[category(k)] (default: by the names of `categories`). Returns the dict."""
    name_to_id = name_to_id or {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for _, rows in samples(corpus):
        for s in rows:
            img = s.meta["image"]
            images.append({"id": img["image_id"], "width": img["width"],
                           "height": img["height"], "file_name": f"{s.key}.jpg",
                           "samdata_sha256": hashlib.sha256(s.image).hexdigest()})
            for k, a in enumerate(s.meta["annotations"]):
                annotations.append({"id": len(annotations) + 1, "image_id": img["image_id"],
                                    "category_id": name_to_id[category(k)],
                                    "segmentation": a["segmentation"], "bbox": a["bbox"],
                                    "area": a["area"], "iscrowd": 0})
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    return data


def concept_dataset(root: Path, corpus: list[str], concepts: list[str],
                    category: Callable[[str, int], str | None] = lambda key, k: category_of(k),
                    score: Callable[[str, int], float] = lambda key, k: 0.9,
                    failed: frozenset = frozenset(),
                    concepts_of_shard: Callable[[str], list[str]] | None = None) -> None:
    """A committed concept-label dataset (write.concepts_table) whose instances are the
    corpus's own masks: annotation k of image `key` has category(key, k) (None: left out)
    with category_id = its position in `concepts` + 1 and score(key, k); the rows' settings
    declare `concepts` (or concepts_of_shard(shard name)); keys in `failed` are error rows."""
    import pyarrow.parquet as pq

    from operators.shards.write import commit_shard, concepts_table, existing_parts

    for shard, rows in samples(corpus):
        names = concepts_of_shard(shard.name) if concepts_of_shard else concepts
        anns = np.empty(len(rows), dtype=object)
        anns[:] = [[] if s.key in failed else [
            {**a, "category": c, "category_id": names.index(c) + 1, "score": score(s.key, k)}
            for k, a in enumerate(s.meta["annotations"])
            if (c := category(s.key, k)) is not None] for s in rows]
        bad = np.array([s.key in failed for s in rows])
        n = len(rows)
        settings = json.dumps({"concepts": names, "score_threshold": 0.5})
        batch = {"image_id": np.array([s.meta["image"]["image_id"] for s in rows]),
                 "key": np.array([s.key for s in rows], dtype=object),
                 "shard": np.array([shard.name] * n, dtype=object),
                 "source_uri": np.array([f"{shard.url}#{s.key}" for s in rows], dtype=object),
                 "orig_hw": np.array([[s.meta["image"]["height"], s.meta["image"]["width"]]
                                      for s in rows]),
                 "model": np.array(["sam3"] * n, dtype=object),
                 "checkpoint_sha256": np.array(["ab" * 32] * n, dtype=object),
                 "settings": np.array([settings] * n, dtype=object),
                 "annotations": anns,
                 "status": np.where(bad, "error", "ok").astype(object),
                 "error": np.where(bad, "labeller failed", "").astype(object),
                 "image_sha256": np.array([hashlib.sha256(s.image).hexdigest() for s in rows],
                                          dtype=object)}
        (root / shard.name).mkdir(parents=True)
        pq.write_table(concepts_table(batch), root / shard.name / f"{shard.name}-a.parquet")
        commit_shard(str(root), shard.name, {"images": n,
                                             "parts": existing_parts(str(root), shard.name).parts})
