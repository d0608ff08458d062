"""8-connected components and small-region cleanup against a plain breadth-first labeller."""

from __future__ import annotations

import numpy as np
import pytest

from bench.official import bfs_components
from operators.everything.regions import connected_components, remove_small_regions


def _blobs(seed: int, h: int = 40, w: int = 57) -> np.ndarray:
    """bool HxW random blobs with holes, diagonal touches and single pixels."""
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.45
    smooth = mask.copy()
    smooth[1:-1, 1:-1] = (mask[:-2, 1:-1].astype(int) + mask[2:, 1:-1] + mask[1:-1, :-2]
                          + mask[1:-1, 2:] + mask[1:-1, 1:-1]) >= 3
    return smooth


def _pixel_labels(mask: np.ndarray) -> np.ndarray:
    """int HxW labels 1..K (0 outside) from connected_components' run labels."""
    run_label, (rows, starts, ends), _ = connected_components(mask)
    out = np.zeros(mask.shape, np.int64)
    for lab, r, s, e in zip(run_label, rows, starts, ends, strict=True):
        out[r, s:e] = lab + 1
    return out


@pytest.mark.parametrize("seed", range(6))
def test_components_equal_breadth_first_labelling(seed):
    mask = _blobs(seed)
    n, ref, stats, _ = bfs_components(mask.astype(np.uint8), 8)
    _, _, sizes = connected_components(mask)
    np.testing.assert_array_equal(_pixel_labels(mask), ref)  # same numbering, raster order
    np.testing.assert_array_equal(sizes, stats[1:, 4])
    assert n - 1 == len(sizes) > 3


def test_diagonal_pixels_are_one_component_and_empty_mask_has_none():
    mask = np.eye(5, dtype=bool) | np.eye(5, dtype=bool)[::-1]  # an X
    assert len(connected_components(mask)[2]) == 1
    assert len(connected_components(np.zeros((4, 4), bool))[2]) == 0


def test_holes_are_filled_and_islands_dropped_below_the_threshold():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:7, 5:7] = False  # a 4-pixel hole
    mask[15, 15] = True  # a 1-pixel island
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed and filled[5:7, 5:7].all() and filled[15, 15]
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[15, 15] and cleaned[2:12, 2:12].all()
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and (same == cleaned).all()


def test_islands_keep_the_largest_when_all_are_small():
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True
    mask[5:7, 5:7] = True
    out, changed = remove_small_regions(mask, 100, "islands")
    assert changed and out.sum() == 4 and out[5:7, 5:7].all()
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 1, "dots")
