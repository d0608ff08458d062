"""Batched run-length encoding against pycocotools, byte for byte, on crafted and random masks,
whole-image and cropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from operators.everything.coco_rle import (
    MaskRuns,
    changes_to_counts,
    counts_to_mask,
    counts_to_string,
    counts_to_strings,
    finish_annotations,
    runs_to_annotations,
    runs_to_segmentations,
)
from operators.everything.geometry import mask_to_rle, masks_to_boxes
from operators.everything.runlength import masks_to_annotations, masks_to_runs


def _blobs(n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    """bool NxHxW: a few filled ellipses each."""
    h, w = hw
    rng = np.random.default_rng(seed)
    ys, xs = np.ogrid[:h, :w]
    out = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ay, ax = rng.uniform(0.5, 0.3 * h + 1), rng.uniform(0.5, 0.3 * w + 1)
            out[i] |= ((ys - cy) / ay) ** 2 + ((xs - cx) / ax) ** 2 <= 1
    return out


def _crafted(hw: tuple[int, int]) -> np.ndarray:
    """bool NxHxW: empty, full, one pixel at each corner and the middle, a frame touching every
    border, whole columns (runs longer than a column), a checkerboard."""
    h, w = hw
    masks = [np.zeros(hw, bool), np.ones(hw, bool)]
    for y, x in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)]:
        m = np.zeros(hw, bool)
        m[y, x] = True
        masks.append(m)
    frame = np.ones(hw, bool)
    frame[1:-1, 1:-1] = False
    cols = np.zeros(hw, bool)
    cols[:, w // 3 : w // 3 + 2] = True
    cols[h // 2 :, w // 3 + 2 : w // 3 + 3] = True  # a run from mid-column over the next
    checker = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
    return np.stack(masks + [frame, cols, checker])


def _check(masks: np.ndarray, crop_box: list[int] | None = None,
           orig_hw: tuple[int, int] | None = None, **kw) -> None:
    """Every field of every mask equals pycocotools' (and masks_to_boxes') on the mask placed
    in the image."""
    n, h, w = masks.shape
    big_h, big_w = orig_hw or (h, w)
    x0, y0, x1, y1 = crop_box or [0, 0, w, h]
    full = np.zeros((n, big_h, big_w), dtype=bool)
    full[:, y0:y1, x0:x1] = masks
    runs = masks_to_runs(torch.from_numpy(masks), crop_box, orig_hw, **kw)
    anns = runs_to_annotations(runs)
    assert runs.boxes.tolist() == masks_to_boxes(torch.from_numpy(full)).tolist()
    assert len(anns) == n
    for ann, m in zip(anns, full, strict=True):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ann["segmentation"] == {"size": [big_h, big_w], "counts": rle["counts"].decode()}
        assert ann["segmentation"] == mask_to_rle(m)  # today's path, byte for byte
        assert ann["area"] == int(mask_utils.area(rle)) == int(m.sum())
        x, y, bw, bh = ann["bbox"]
        expected = mask_utils.toBbox(rle).tolist()  # pycocotools: exclusive max edges
        assert ([x, y, bw + 1, bh + 1] if ann["area"] else [x, y, bw, bh]) == expected


@pytest.mark.parametrize("hw", [(1, 1), (1, 9), (9, 1), (2, 2), (7, 13), (13, 7), (64, 48)])
def test_crafted_masks_equal_pycocotools(hw):
    _check(_crafted(hw))


def test_full_size_blobs_equal_pycocotools():
    _check(_blobs(4, (1500, 2250), seed=1))


@pytest.mark.parametrize("seed", range(4))
def test_random_masks_equal_pycocotools(seed):
    rng = np.random.default_rng(seed)
    for density in [0.02, 0.5, 0.98]:
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        _check(rng.random((5, h, w)) < density)


@pytest.mark.parametrize("crop_box", [
    [0, 0, 9, 7],  # top-left
    [4, 3, 13, 10],  # touching the right and bottom edges
    [5, 0, 11, 10],  # whole columns (full height), inside
    [0, 0, 6, 10],  # whole columns from the left edge
    [7, 0, 13, 10],  # whole columns to the last pixel
    [0, 2, 13, 8],  # full width, inside
    [3, 4, 8, 6],  # inside, touching nothing
    [12, 9, 13, 10],  # the last pixel
    [0, 0, 1, 1],  # the first pixel
    [0, 0, 13, 10],  # the whole image
])
def test_crops_placed_in_the_image_equal_pycocotools(crop_box):
    x0, y0, x1, y1 = crop_box
    hw = (y1 - y0, x1 - x0)
    rng = np.random.default_rng(x0 * 100 + y0)
    _check(np.concatenate([_crafted(hw), rng.random((6, *hw)) < 0.5]), crop_box, (10, 13))


def test_crop_of_a_full_size_image():
    crop_box = [869, 494, 2250, 1500]  # the last layer-1 crop of a 1500x2250 image
    _check(_blobs(3, (1006, 1381), seed=2), crop_box, (1500, 2250))


def test_chunks_give_the_same_result():
    masks = np.random.default_rng(5).random((9, 11, 17)) < 0.4
    whole = masks_to_runs(torch.from_numpy(masks), [3, 0, 20, 11], (11, 30))
    for chunk_pixels in [1, 12 * 17, 5 * 12 * 17]:
        chunked = masks_to_runs(torch.from_numpy(masks), [3, 0, 20, 11], (11, 30),
                                chunk_pixels=chunk_pixels)
        for field in ["changes", "offsets", "areas", "boxes"]:
            np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field))
    _check(masks, [3, 0, 20, 11], (11, 30), chunk_pixels=12 * 17 * 2)


def test_compact_result_and_empty_batch():
    masks = torch.zeros(3, 6, 5, dtype=torch.bool)
    masks[0, 2:4, 1] = True  # column 1, rows 2-3: flat 8-9
    masks[1, 0, 0] = True
    runs = masks_to_runs(masks)
    assert runs.changes.dtype == np.int32
    assert runs.changes.tolist() == [8, 10, 0, 1] and runs.offsets.tolist() == [0, 2, 4, 4]
    assert runs.areas.tolist() == [2, 1, 0]
    assert runs.boxes.tolist() == [[1, 2, 1, 3], [0, 0, 0, 0], [0, 0, 0, 0]]
    counts, offsets = changes_to_counts(runs.changes, runs.offsets, 30)
    assert counts.tolist() == [8, 2, 20, 0, 1, 29, 30] and offsets.tolist() == [0, 3, 6, 7]
    empty = masks_to_runs(torch.zeros(0, 6, 5, dtype=torch.bool), [2, 1, 7, 7], (8, 9))
    assert len(empty) == 0 and empty.offsets.tolist() == [0]
    assert runs_to_annotations(empty) == []
    assert masks_to_annotations(torch.zeros(0, 6, 5, dtype=torch.bool)) == []


def test_image_over_int32_positions():
    # 50000 x 50000 = 2.5e9 pixels: positions need int64; only the crop is ever built
    big_hw, crop_box = (50000, 50000), [49990, 20, 50000, 25]
    masks = np.random.default_rng(3).random((3, 5, 10)) < 0.5
    masks[1] = False
    runs = masks_to_runs(torch.from_numpy(masks), crop_box, big_hw)
    assert runs.changes.dtype == np.int64
    anns = runs_to_annotations(runs)
    for ann, m in zip(anns, masks, strict=True):
        # Reference: the set pixels' column-major indices in the image, grouped into runs
        r, c = np.nonzero(m)
        flat = np.sort((c + crop_box[0]) * big_hw[0] + r + crop_box[1])
        edges = [0] + [int(v) for v in flat if v - 1 not in set(flat)]
        edges = sorted(set(edges[1:]) | {int(v) + 1 for v in flat if v + 1 not in set(flat)})
        counts = np.diff([0, *edges, big_hw[0] * big_hw[1]]).tolist()
        rle = mask_utils.frPyObjects({"size": list(big_hw), "counts": counts}, *big_hw)
        assert ann["segmentation"]["counts"] == rle["counts"].decode()
        assert ann["area"] == int(m.sum())


def _string_to_counts(s: str) -> list[int]:
    """Reference decoder of the COCO string format (5-bit groups, least significant first, 0x20
    = more groups follow, sign from the last group's 0x10; deltas against the count two before
    from the fourth count on)."""
    counts, p = [], 0
    while p < len(s):
        value, shift, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            value |= (c & 0x1F) << shift
            shift, more, p = shift + 5, bool(c & 0x20), p + 1
        if c & 0x10:
            value -= 1 << shift
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def test_counts_to_string_equals_pycocotools_on_random_counts():
    # pycocotools' rleToString writes into 6 chars a count, and values of 2**29 and more take 7
    # (it overruns its buffer): compare with it where counts stay below 2**24, with the
    # reference decoder everywhere
    rng = np.random.default_rng(7)
    safe = [[0], [5], [0, 1], [0, 0, 0], [16, 15, 31, 32, 511, 512, 513, 2**20, 2**20 - 1,
                                           2**20 + 1, 1, 2**24 - 1, 0, 2**24 - 1]]
    for _ in range(300):
        top = int(rng.choice([32, 2**10, 2**20, 2**22, 2**24]))
        safe.append(rng.integers(0, top, int(rng.integers(1, 60))).tolist())
    for counts in safe:
        rle = mask_utils.frPyObjects({"size": [1, sum(counts)], "counts": counts}, 1,
                                     sum(counts))
        assert counts_to_string(np.array(counts)) == rle["counts"].decode(), counts
    huge = [[2**32 - 1], [0, 2**32 - 1, 1, 2**31, 0, 3, 2**32 - 1, 0], [2**29, 2**29 - 1, 2**34]]
    for _ in range(100):
        huge.append(rng.integers(0, 2**32, int(rng.integers(1, 40))).tolist())
    for counts in safe + huge:
        assert _string_to_counts(counts_to_string(np.array(counts))) == counts
    # Batched: the same strings, mask by mask
    cases = safe + huge
    offsets = np.cumsum([0] + [len(c) for c in cases])
    assert counts_to_strings(np.concatenate(cases), offsets) == [
        counts_to_string(np.array(c)) for c in cases]


def test_bad_inputs_name_what_was_expected():
    with pytest.raises(ValueError, match="expected masks bool NxHxW, got torch.uint8"):
        masks_to_runs(torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected masks of the crop box's size"):
        masks_to_runs(torch.zeros(1, 4, 4, dtype=torch.bool), [0, 0, 5, 4], (10, 10))
    with pytest.raises(ValueError, match="expected a non-empty crop box inside the image"):
        masks_to_runs(torch.zeros(1, 4, 4, dtype=torch.bool), [8, 8, 12, 12], (10, 10))
    with pytest.raises(ValueError, match="expected 1-D counts"):
        counts_to_string(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="expected offsets rising from 0 to 3"):
        counts_to_strings(np.zeros(3, dtype=np.int64), np.array([0, 2]))


@pytest.mark.parametrize("crop_box,orig_hw", [
    (None, None), ([4, 3, 13, 10], (10, 13)), ([0, 2, 13, 8], (10, 13)), ([5, 0, 11, 10], (10, 13)),
])
def test_unfinished_segmentations_finish_to_pycocotools(crop_box, orig_hw):
    """The actor's form (counts, "runs") finished on a CPU worker gives pycocotools' strings
    byte for byte on crafted masks (empty, full, single pixels, every border, odd sizes)."""
    x0, y0, x1, y1 = crop_box or [0, 0, 13, 10]
    masks = _crafted((y1 - y0, x1 - x0))
    big_h, big_w = orig_hw or masks.shape[1:]
    full = np.zeros((len(masks), big_h, big_w), dtype=bool)
    full[:, y0:y1, x0:x1] = masks
    runs = masks_to_runs(torch.from_numpy(masks), crop_box, orig_hw)
    raw = runs_to_segmentations(runs, encode=False)
    assert [list(r) for r in raw] == [["size", "runs"]] * len(masks)
    assert all(r["runs"].dtype == np.int32 for r in raw)
    rows = [[{"segmentation": r, "area": int(a)}] for r, a in zip(raw, runs.areas, strict=True)]
    finished = finish_annotations(rows)
    for (ann,), m, r in zip(finished, full, raw, strict=True):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ann["segmentation"] == {"size": [big_h, big_w], "counts": rle["counts"].decode()}
        assert ann["area"] == int(m.sum())
        assert np.array_equal(counts_to_mask(r["runs"], (big_h, big_w)), m)
    assert rows[0][0]["segmentation"] is raw[0]  # the input is left as it was
    assert [s["counts"] for s in runs_to_segmentations(runs)] == [
        a[0]["segmentation"]["counts"] for a in finished]


def test_finish_annotations_takes_arrow_round_trips_and_passes_the_rest_through():
    masks = _blobs(3, (9, 14), seed=6)
    runs = masks_to_runs(torch.from_numpy(masks))
    want = runs_to_segmentations(runs)
    raw = runs_to_segmentations(runs, encode=False)
    # as they may come back from Arrow: lists and numpy arrays, rows as object arrays
    arrowish = np.empty(4, dtype=object)
    arrowish[:] = [
        np.array([{"segmentation": {"size": np.array(r["size"]), "runs": r["runs"].tolist()},
                   "id": k} for k, r in enumerate(raw)], dtype=object),
        None,
        [{"segmentation": want[0], "id": 0}, {"id": 1, "prompt": "no mask"}],
        [],
    ]
    out = finish_annotations(arrowish)
    assert [a["segmentation"] for a in out[0]] == want
    assert [list(a) for a in out[0]] == [["segmentation", "id"]] * 3
    assert out[1] is None and out[3] == []
    assert out[2] == [{"segmentation": want[0], "id": 0}, {"id": 1, "prompt": "no mask"}]
    assert finish_annotations([]) == []


def test_finish_annotations_refuses_counts_of_another_size():
    bad = [[{"segmentation": {"size": [3, 4], "runs": np.array([5, 6])}}]]
    with pytest.raises(ValueError, match=r"summing to H\*W = 12, got a sum of 11 \(image 0"):
        finish_annotations(bad)
    with pytest.raises(ValueError, match="expected runs as 1-D counts"):
        finish_annotations([[{"segmentation": {"size": [1, 1], "runs": np.zeros((0,))}}]])
    with pytest.raises(ValueError, match=r"expected 1-D non-negative counts summing to H\*W"):
        counts_to_mask(np.array([3, 4]), (2, 3))


def test_runs_take_cat_and_decode():
    masks = np.concatenate([_crafted((7, 13)), _blobs(4, (7, 13), seed=8)])
    runs = masks_to_runs(torch.from_numpy(masks))
    for i in range(len(masks)):
        assert np.array_equal(runs.mask(i), masks[i])
    index = [5, 0, 5, len(masks) - 1, 1]
    picked = runs.take(index)
    assert runs_to_annotations(picked) == [runs_to_annotations(runs)[i] for i in index]
    parts = [runs.take([]), runs.take(index[:2]), runs.take(index[2:])]
    whole = MaskRuns.cat(parts, (7, 13))
    for field in ["changes", "offsets", "areas", "boxes"]:
        np.testing.assert_array_equal(getattr(whole, field), getattr(picked, field))
    assert len(MaskRuns.cat([], (7, 13))) == 0 and len(MaskRuns.empty((7, 13))) == 0
    assert runs_to_segmentations(MaskRuns.empty((7, 13)), encode=False) == []
    with pytest.raises(ValueError, match=r"expected mask indices in \[0, 14\), got 0..14"):
        runs.take([0, 14])
    with pytest.raises(ValueError, match=r"expected runs of an image of \(7, 14\), got \(7, 13\)"):
        MaskRuns.cat([runs], (7, 14))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_equals_cpu():
    masks = torch.from_numpy(np.concatenate([_blobs(5, (300, 450), seed=4),
                                             _crafted((300, 450))]))
    for crop_box, hw in [(None, None), ([100, 0, 550, 300], (300, 700)),
                         ([10, 20, 460, 320], (400, 500))]:
        cpu = masks_to_runs(masks, crop_box, hw)
        gpu = masks_to_runs(masks.cuda(), crop_box, hw, chunk_pixels=300 * 450 * 3)
        for field in ["changes", "offsets", "areas", "boxes"]:
            np.testing.assert_array_equal(getattr(gpu, field), getattr(cpu, field))
