"""What the golden scripts share: the seeded image and the seeded sample of stored values."""

from __future__ import annotations

import numpy as np


def random_image(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded random uint8 HxWx3 RGB image."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def seeded_indices(embedding_numel: int, hw: tuple[int, int], embed_samples: int,
                   mask_pixels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sorted int64 flat indices: `embed_samples` into the embedding, `mask_pixels`
    into an HxW mask."""
    rng = np.random.default_rng(seed)
    emb = np.sort(rng.choice(embedding_numel, embed_samples, replace=False)).astype(np.int64)
    pix = np.sort(rng.choice(hw[0] * hw[1], mask_pixels, replace=False)).astype(np.int64)
    return emb, pix
