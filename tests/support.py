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


__all__ = ["as_batch", "embedder", "official", "official_tiny_sam", "smooth_image"]
