"""Helpers shared by several test modules (one place, so no test imports another's privates)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.official import official_tiny_sam


def official():
    """The official `segment_anything` package (skips the test if it is not installed)."""
    from bench.official import official as load

    try:
        return load()
    except ImportError as e:  # pragma: no cover - only without the test extra
        pytest.skip(f"official segment-anything not installed: {e}")


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 HxWx3: a smooth image with edges (a random field is all high frequency)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                    ((xx + yy) % 64) * 4], axis=-1).astype(np.int32)
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = rng.integers(0, 255, 3)
    return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def as_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as Ray Data hands them to map_batches: one numpy array per column."""
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        if isinstance(values[0], np.ndarray) and len({v.shape for v in values}) == 1:
            out[k] = np.stack(values)
        elif isinstance(values[0], np.ndarray):  # ragged (original images): objects
            out[k] = np.empty(len(values), dtype=object)
            out[k][:] = values
        elif isinstance(values[0], (str, bytes)):
            out[k] = np.array(values, dtype=object)
        else:
            out[k] = np.array(values)
    return out




def embedder(name: str = "sam_tiny", dtype: str = "float16", ray_batch_size: int = 16,
             device: str = "auto", **model_fields):
    """An Embedder built from config sections as the pipeline builds it (random weights,
    seed 0 unless given)."""
    from operators.config import ComputeConfig, EmbedOutputConfig, ModelConfig
    from operators.embed.embedder import Embedder

    model_fields.setdefault("seed", 0)
    return Embedder(ModelConfig(name=name, **model_fields),
                    EmbedOutputConfig(path="-", dtype=dtype),
                    ComputeConfig(ray_batch_size=ray_batch_size), device=device)


def label_dataset(root, corpus: list[str], keep=lambda k: True, failed: frozenset = frozenset(),
                  source_of=None) -> None:
    """A committed label dataset (autolabel's table) whose masks are the corpus's own SA-1B
    annotations, those for which keep(index within image) is true; keys in `failed` are error
    rows (their labeller failed); source_of(url) -> the shard URL the rows name (default:
    the one they came from). Rows carry the sha256 of their image bytes, as jobs write it."""
    import hashlib
    from pathlib import Path

    import pyarrow.parquet as pq

    from operators.shards.listing import Shard
    from operators.shards.read import Sample, iter_shard
    from operators.shards.write import commit_shard, existing_parts, masks_table

    root = Path(root)
    for url in corpus:
        shard = Shard.from_url(url.rsplit("/", 1)[-1][:-4], url)
        rows = [s for s in iter_shard(shard) if isinstance(s, Sample)]
        bad = np.array([s.key in failed for s in rows])
        anns = np.empty(len(rows), dtype=object)
        anns[:] = [[] if s.key in failed else
                   [a for k, a in enumerate(s.meta["annotations"]) if keep(k)] for s in rows]
        named = source_of(url) if source_of else url
        batch = {"image_id": np.array([s.meta["image"]["image_id"] for s in rows]),
                 "key": np.array([s.key for s in rows], dtype=object),
                 "shard": np.array([shard.name] * len(rows), dtype=object),
                 "source_uri": np.array([f"{named}#{s.key}" for s in rows], dtype=object),
                 "orig_hw": np.array([[s.meta["image"]["height"], s.meta["image"]["width"]]
                                      for s in rows]),
                 "model": np.array(["gt"] * len(rows), dtype=object),
                 "checkpoint_sha256": np.array([""] * len(rows), dtype=object),
                 "settings": np.array(["{}"] * len(rows), dtype=object),
                 "annotations": anns,
                 "status": np.where(bad, "error", "ok").astype(object),
                 "error": np.where(bad, "labeller failed", "").astype(object),
                 "image_sha256": np.array([hashlib.sha256(s.image).hexdigest() for s in rows],
                                          dtype=object)}
        (root / shard.name).mkdir(parents=True)
        pq.write_table(masks_table(batch), root / shard.name / f"{shard.name}-a.parquet")
        commit_shard(str(root), shard.name, {"images": len(rows),
                                             "parts": existing_parts(str(root), shard.name).parts})


__all__ = ["as_batch", "embedder", "label_dataset", "official", "official_tiny_sam",
           "smooth_image"]
