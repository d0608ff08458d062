"""Small-region cleanup of binary masks: 8-connected components without OpenCV.

Components are found on row runs (maximal horizontal stretches of set pixels), not pixels:
runs of neighbouring rows that touch (8-connectivity: overlapping or diagonal) are joined with
a vectorised union-find, so the work is proportional to the number of runs. Labels follow the
raster order of each component's first pixel (OpenCV's order), which decides ties.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool HxW -> (row, start, end) int64 arrays of the set runs in raster order; a run
    covers columns start .. end - 1."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past where it ends
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows.astype(np.int64), starts.astype(np.int64), ends.astype(np.int64)


def _touching_pairs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of runs where run j in the row above touches run i (8-connected)."""
    stride = width + 2
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    above = (rows - 1) * stride
    # Runs of a row are disjoint and sorted, so the touching runs above form a contiguous range:
    # from the first with end >= start_i to the last with start <= end_i.
    lo = np.searchsorted(end_keys, above + starts, side="left")
    hi = np.searchsorted(start_keys, above + ends, side="right")
    counts = np.clip(hi - lo, 0, None)
    i = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return i, np.repeat(lo, counts) + offsets


def _union(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """int64 n: the smallest node index of each node's component, for undirected edges a-b."""
    parent = np.arange(n)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        # Hook the larger root under the smaller one, then compress paths fully
        np.minimum.at(parent, np.maximum(ra[differ], rb[differ]),
                      np.minimum(ra[differ], rb[differ]))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of bool HxW `mask`.

    Returns (run_label, runs, sizes): int64 label 0..K-1 of each run in raster order, the
    (row, start, end) runs themselves, and int64 K pixel counts, labels numbered by the raster
    position of each component's first pixel."""
    rows, starts, ends = _runs(mask)
    if len(rows) == 0:
        return np.zeros(0, np.int64), (rows, starts, ends), np.zeros(0, np.int64)
    i, j = _touching_pairs(rows, starts, ends, mask.shape[1])
    roots = _union(len(rows), i, j)
    # The first run of a component holds its first pixel; runs are in raster order
    unique_roots, first = np.unique(roots, return_index=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(unique_roots), np.int64)
    rank[order] = np.arange(len(unique_roots))
    run_label = rank[np.searchsorted(unique_roots, roots)]
    sizes = np.bincount(run_label, weights=ends - starts, minlength=len(unique_roots))
    return run_label, (rows, starts, ends), sizes.astype(np.int64)


def _paint(shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray
           ) -> np.ndarray:
    """bool HxW with the given runs set."""
    edges = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(edges, (rows, starts), 1)
    np.add.at(edges, (rows, ends), -1)
    return np.cumsum(edges, axis=1)[:, : shape[1]] > 0


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str
                         ) -> tuple[np.ndarray, bool]:
    """Fill holes (`mode="holes"`) or drop islands (`mode="islands"`) smaller than
    `area_thresh` pixels in bool HxW `mask`, with 8-connectivity. Islands mode keeps the largest
    island when every island is small. Returns (bool HxW mask, whether it changed)."""
    if mode not in ("holes", "islands"):
        raise ValueError(f"expected mode 'holes' or 'islands', got {mode!r}")
    working = ~mask if mode == "holes" else mask
    run_label, (rows, starts, ends), sizes = connected_components(working)
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if mode == "holes":
        pick = small[run_label]
        return mask | _paint(mask.shape, rows[pick], starts[pick], ends[pick]), True
    keep = ~small
    if not keep.any():
        keep[int(np.argmax(sizes))] = True
    pick = keep[run_label]
    return _paint(mask.shape, rows[pick], starts[pick], ends[pick]), True
