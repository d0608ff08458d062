"""COCO run-length encoding on the host, numpy only: the half of `runlength.py` that turns the
change points, areas and boxes copied back from the device into SA-1B fields. No torch, so the
writer stage (a CPU worker) can finish annotations without importing it.

Counts and change points are those described in `runlength.py`: counts are the run lengths of
the mask in column-major order, starting with a run of 0s. The string encoding follows the
format of pycocotools' `rleToString` (read for the facts, not copied): every count from the
fourth on is stored as its difference from the count two before; each value is then written as
the fewest 5-bit groups, least significant first, that hold it as a two's-complement number, a
sixth bit (0x20) set on every group but the last, each group plus 48 as one ASCII character.

Two forms of an annotation's `segmentation` travel through a job:
- finished: {"size": [H, W], "counts": str}, COCO compressed RLE, what is written and exported;
- unfinished: {"size": [H, W], "runs": int array}, the same mask's COCO counts uncompressed
  (int32, int64 for images of 2**31 pixels or more), what the auto-labeling actor hands on so
  that the string building happens on CPU workers (`finish_annotations`, in the writer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# Enough 5-bit groups for any int64 value (13 * 5 = 65 bits).
_MAX_GROUPS = 13


@dataclass
class MaskRuns:
    """Compact host copy of a batch of N masks of an HxW image, enough to build their COCO RLE.

    hw: (H, W) of the image.
    changes: int32 K (int64 when H*W >= 2**31) change points, ascending within each mask.
    offsets: int64 N+1; mask i's change points are changes[offsets[i]:offsets[i + 1]].
    areas: int64 N, pixels set.
    boxes: int64 Nx4 XYXY in the image frame with inclusive max edges; [0, 0, 0, 0] when empty.
    """

    hw: tuple[int, int]
    changes: np.ndarray
    offsets: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)

    @staticmethod
    def empty(hw: tuple[int, int]) -> MaskRuns:
        """No masks of an HxW image."""
        dtype = np.int32 if hw[0] * hw[1] < 2**31 else np.int64
        return MaskRuns(hw=(int(hw[0]), int(hw[1])), changes=np.zeros(0, dtype),
                        offsets=np.zeros(1, np.int64), areas=np.zeros(0, np.int64),
                        boxes=np.zeros((0, 4), np.int64))

    @staticmethod
    def cat(parts: Sequence[MaskRuns], hw: tuple[int, int]) -> MaskRuns:
        """The masks of every part (all of the HxW image `hw`), in order (one part: itself)."""
        hw = (int(hw[0]), int(hw[1]))
        for p in parts:
            if tuple(p.hw) != hw:
                raise ValueError(f"expected runs of an image of {hw}, got {tuple(p.hw)}")
        if not parts:
            return MaskRuns.empty(hw)
        if len(parts) == 1:
            return parts[0]
        lengths = np.concatenate([[0]] + [np.diff(p.offsets) for p in parts])
        return MaskRuns(hw=hw, changes=np.concatenate([p.changes for p in parts]),
                        offsets=np.cumsum(lengths, dtype=np.int64),
                        areas=np.concatenate([p.areas for p in parts]),
                        boxes=np.concatenate([p.boxes for p in parts]))

    def take(self, index: Sequence[int] | np.ndarray) -> MaskRuns:
        """The masks at `index` (int K, any order, repeats allowed). Arrays are never written
        to, so `take(range(N))` is this object itself."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"expected mask indices in [0, {len(self)}), got "
                             f"{index.min()}..{index.max()}")
        if len(index) == len(self) and np.array_equal(index, np.arange(len(self))):
            return self
        starts, ends = self.offsets[index], self.offsets[index + 1]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        # one slice a mask: a memcpy each, cheaper than a gather of every change point
        changes = np.concatenate([self.changes[:0]] + [
            self.changes[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)])
        return MaskRuns(hw=self.hw, changes=changes, offsets=offsets, areas=self.areas[index],
                        boxes=self.boxes[index])

    def mask(self, i: int) -> np.ndarray:
        """bool HxW: mask i decoded (a transposed view of the column-major pixels)."""
        big_h, big_w = self.hw
        changes = self.changes[self.offsets[i] : self.offsets[i + 1]]
        return counts_to_mask(np.diff(changes, prepend=0, append=big_h * big_w), self.hw)


def changes_to_counts(changes: np.ndarray, offsets: np.ndarray, numel: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Change points of N masks of `numel` pixels (int K, ascending per mask; int64 N+1
    offsets) -> their COCO counts (int K+N: int32 for int32 change points of fewer than 2**31
    pixels, else int64) and count offsets (int64 N+1): mask i has one count more than change
    points, the gaps between 0, its change points and `numel`."""
    changes = np.asarray(changes)
    dtype = np.int32 if changes.dtype == np.int32 and numel < 2**31 else np.int64
    changes = changes.astype(dtype, copy=False)
    offsets = np.asarray(offsets, dtype=np.int64)
    count_offsets = offsets + np.arange(len(offsets))
    # Where each run ends: a mask's change points, then numel
    ends = np.insert(changes, offsets[1:], numel)
    counts = np.empty_like(ends)
    np.subtract(ends[1:], ends[:-1], out=counts[1:])
    starts = count_offsets[:-1]
    counts[starts] = ends[starts]  # a mask's first run starts at 0
    return counts, count_offsets


def counts_to_strings(counts: np.ndarray, offsets: np.ndarray) -> list[str]:
    """int M counts of N masks (mask i's: counts[offsets[i]:offsets[i + 1]], int64 N+1 offsets)
    -> N COCO compressed RLE strings, as pycocotools' `rleToString` writes them (it also writes
    counts of 2**29 and more, which overrun pycocotools' own buffer). Vectorised over all
    counts of the batch."""
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    if counts.ndim != 1 or offsets.ndim != 1 or len(offsets) == 0:
        raise ValueError(f"expected 1-D counts and 1-D offsets, got shapes {counts.shape} and "
                         f"{offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != len(counts) or np.any(np.diff(offsets) < 0):
        raise ValueError(f"expected offsets rising from 0 to {len(counts)}, got "
                         f"{offsets[0]}..{offsets[-1]} (or falling somewhere)")
    # From the fourth count of each mask on, the difference from the count two before
    local = np.arange(len(counts)) - np.repeat(offsets[:-1], np.diff(offsets))
    values = counts.copy()
    delta = local > 2
    values[delta] -= counts[np.flatnonzero(delta) - 2]
    # Groups a value needs: the fewest k with the value in [-2**(5k-1), 2**(5k-1))
    groups = np.ones(len(values), dtype=np.int64)
    for k in range(1, _MAX_GROUPS):
        high = values >> (5 * k - 1)
        groups += (high != 0) & (high != -1)
    width = int(groups.max(initial=1))
    shifts = 5 * np.arange(width, dtype=np.int64)
    chars = ((values[:, None] >> shifts) & 0x1F).astype(np.uint8)  # (M, width)
    chars |= np.where(shifts[None, :] < 5 * (groups[:, None] - 1), 0x20, 0).astype(np.uint8)
    chars += 48
    text = chars[np.arange(width)[None, :] < groups[:, None]].tobytes().decode("ascii")
    ends = np.concatenate([[0], np.cumsum(groups)])[offsets].tolist()
    return [text[a:b] for a, b in zip(ends[:-1], ends[1:], strict=True)]


def counts_to_string(counts: np.ndarray) -> str:
    """int K counts of one mask -> its COCO compressed RLE string (as pycocotools')."""
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"expected 1-D counts, got shape {counts.shape}")
    return counts_to_strings(counts, np.array([0, len(counts)]))[0]


def counts_to_mask(counts: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """int K COCO counts (uncompressed) of an HxW mask -> bool HxW (a transposed view of the
    column-major pixels)."""
    counts = np.asarray(counts, dtype=np.int64)
    big_h, big_w = (int(v) for v in hw)
    if counts.ndim != 1 or len(counts) == 0 or counts.min() < 0 or \
            counts.sum() != big_h * big_w:
        raise ValueError(f"expected 1-D non-negative counts summing to H*W = {big_h * big_w}, "
                         f"got shape {counts.shape} summing to {int(counts.sum())}")
    values = (np.arange(len(counts)) % 2).astype(bool)  # runs of 0s, then 1s, alternating
    return np.repeat(values, counts).reshape(big_w, big_h).T


def runs_to_segmentations(runs: MaskRuns, encode: bool = True) -> list[dict]:
    """MaskRuns of N masks -> N `segmentation` fields: {"size": [H, W], "counts": str} (encode)
    or {"size": [H, W], "runs": int32 counts} (not encoded: the cheap part, for
    `finish_annotations` to complete elsewhere; int64 for images of 2**31 pixels or more)."""
    big_h, big_w = runs.hw
    counts, count_offsets = changes_to_counts(runs.changes, runs.offsets, big_h * big_w)
    if encode:
        return [{"size": [big_h, big_w], "counts": s}
                for s in counts_to_strings(counts, count_offsets)]
    return [{"size": [big_h, big_w], "runs": counts[a:b]}
            for a, b in zip(count_offsets[:-1].tolist(), count_offsets[1:].tolist(), strict=True)]


def runs_to_annotations(runs: MaskRuns) -> list[dict]:
    """MaskRuns of N masks -> N SA-1B fields {"segmentation": {"size": [H, W], "counts": str},
    "area": int, "bbox": [x, y, w, h]} with w = x1 - x0 and h = y1 - y0 of the inclusive XYXY
    box (as our generator writes them). CPU only."""
    boxes = runs.boxes.copy()
    boxes[:, 2:] -= boxes[:, :2]
    return [{"segmentation": s, "area": a, "bbox": b}
            for s, a, b in zip(runs_to_segmentations(runs), runs.areas.tolist(), boxes.tolist(),
                               strict=True)]


def _unfinished(annotation: dict) -> bool:
    seg = annotation.get("segmentation")
    return isinstance(seg, dict) and seg.get("runs") is not None


def finish_annotations(rows: Iterable[Iterable[dict] | None]) -> list[list[dict] | None]:
    """Per image, SA-1B annotation dicts -> the same annotations with every unfinished
    segmentation ({"size", "runs"}, see the module docstring) replaced by its finished form
    ({"size": [H, W], "counts": str}). New lists and, where a segmentation changed, new dicts
    (keys in the same order); other annotations (finished, or without a segmentation) and None
    rows pass through as they are.
    The strings of all images are built in one vectorised call. `runs` and `size` may be any
    int sequences (numpy arrays or lists, as after an Arrow round trip)."""
    out = [None if r is None else list(r) for r in rows]
    todo = [(i, j) for i, r in enumerate(out) if r is not None
            for j, a in enumerate(r) if _unfinished(a)]
    if not todo:
        return out
    counts = [np.asarray(out[i][j]["segmentation"]["runs"], dtype=np.int64) for i, j in todo]
    sizes = np.array([[int(v) for v in out[i][j]["segmentation"]["size"]] for i, j in todo],
                     dtype=np.int64).reshape(-1, 2)
    lengths = np.array([c.size if c.ndim == 1 else -1 for c in counts], dtype=np.int64)
    if lengths.min() < 1:
        k = int(np.argmin(lengths))
        raise ValueError(f"expected runs as 1-D counts, at least one, got shape "
                         f"{counts[k].shape} (image {todo[k][0]}, annotation {todo[k][1]})")
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(counts)
    sums = np.add.reduceat(flat, offsets[:-1])
    bad = np.flatnonzero((sums != sizes[:, 0] * sizes[:, 1]) | (np.minimum.reduceat(
        flat, offsets[:-1]) < 0))
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"expected runs of non-negative counts summing to H*W = "
                         f"{int(sizes[k, 0] * sizes[k, 1])}, got a sum of {int(sums[k])} "
                         f"(image {todo[k][0]}, annotation {todo[k][1]})")
    strings = counts_to_strings(flat, offsets)
    for (i, j), size, s in zip(todo, sizes.tolist(), strings, strict=True):
        ann = out[i][j]
        out[i][j] = {**ann, "segmentation": {"size": size, "counts": s}}
    return out
