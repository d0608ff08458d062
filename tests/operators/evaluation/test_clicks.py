"""RITM click simulation on crafted masks: deepest points, padding, error regions, labels."""

from __future__ import annotations

import numpy as np
import pytest

from operators.evaluation.clicks import (
    Click,
    border_distance,
    click_prompts,
    deepest_in,
    first_click,
    next_click,
    simulate_clicks,
)


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _brute_distance(region: np.ndarray) -> np.ndarray:
    """Distance of every region pixel to the nearest pixel outside it, the image surrounded by
    a ring of outside pixels; written plainly, independent of scipy."""
    h, w = region.shape
    ring = np.zeros((h + 2, w + 2), dtype=bool)
    ring[1:-1, 1:-1] = region
    outside = np.argwhere(~ring) - 1  # (M, 2) y, x in image coordinates
    inside = np.argwhere(region)  # (N, 2)
    gaps = inside[:, None, :] - outside[None, :, :]  # (N, M, 2)
    out = np.zeros((h, w))
    out[inside[:, 0], inside[:, 1]] = np.sqrt((gaps**2).sum(-1).min(1))
    return out


def test_first_click_is_the_centre_of_an_odd_square():
    gt = _rect(40, 40, 10, 19, 20, 29)  # 9x9, centre (y=14, x=24)
    assert first_click(gt) == Click(x=24, y=14, positive=True)


def test_first_click_ties_go_to_the_first_pixel_in_row_major_order():
    gt = _rect(20, 30, 3, 8, 2, 11)  # 5 rows x 9 cols: depth 3 on row 5 for x = 4..8
    depth = border_distance(gt)
    assert depth.max() == 3.0 and depth[5, 3:10].tolist() == [2, 3, 3, 3, 3, 3, 2]
    assert first_click(gt) == Click(x=4, y=5, positive=True)


def test_first_click_in_an_l_shape_is_at_the_junction():
    gt = _rect(50, 50, 5, 35, 5, 15) | _rect(50, 50, 25, 35, 5, 35)  # | and _ bars, 10 px thick
    click = first_click(gt)
    assert 25 <= click.y < 35 and 5 <= click.x < 15  # in the corner square, not in an arm
    depth = _brute_distance(gt)
    assert depth[click.y, click.x] == pytest.approx(depth.max())
    assert depth[click.y, click.x] > 5.0  # deeper than any point of a 10 px arm
    ys, xs = np.nonzero(depth == depth.max())
    assert (click.y, click.x) == (ys[0], xs[0])


def test_image_border_counts_as_boundary():
    gt = _rect(10, 20, 0, 10, 0, 10)  # touches the top, bottom and left image borders
    # Without the padding ring the deepest pixels would lie on the left image border
    assert first_click(gt) == Click(x=4, y=4, positive=True)
    rng = np.random.default_rng(0)
    for _ in range(5):
        region = rng.random((9, 11)) < 0.7
        np.testing.assert_allclose(border_distance(region), _brute_distance(region))


def test_second_click_is_positive_in_a_missing_chunk():
    gt = _rect(40, 40, 10, 30, 10, 30)
    pred = gt.copy()
    pred[10:30, 20:30] = False  # misses the right half (20x10)
    pred[0:2, 0:2] = True  # a small false positive
    first = first_click(gt)
    click = next_click(gt, pred, [first])
    assert click.positive
    assert 10 <= click.y < 30 and 20 <= click.x < 30


def test_second_click_is_negative_in_a_spill():
    gt = _rect(40, 60, 10, 30, 10, 30)
    pred = gt | _rect(40, 60, 5, 35, 30, 50)  # spills 30x20 to the right
    pred[15:17, 15:17] = False  # a small false negative
    click = next_click(gt, pred, [first_click(gt)])
    assert not click.positive
    assert 5 <= click.y < 35 and 30 <= click.x < 50


def test_equal_depths_give_a_negative_click():
    gt = _rect(20, 20, 2, 7, 2, 7)  # false negatives: depth 3 at (4, 4)
    pred = _rect(20, 20, 10, 15, 10, 15)  # false positives: depth 3 at (12, 12)
    assert next_click(gt, pred) == Click(x=12, y=12, positive=False)


def test_clicked_pixels_are_not_clicked_again():
    gt = _rect(20, 20, 5, 10, 5, 10)  # 5x5: unique depth-3 pixel at (7, 7)
    empty = np.zeros_like(gt)
    first = next_click(gt, empty)
    assert first == Click(x=7, y=7, positive=True)
    second = next_click(gt, empty, [first])
    assert second.positive and (second.x, second.y) != (7, 7)
    assert border_distance(gt)[second.y, second.x] == 2.0


def test_a_perfect_prediction_gets_the_official_fallback_click():
    gt = _rect(16, 16, 4, 12, 4, 12)
    assert next_click(gt, gt.copy()) == Click(x=0, y=0, positive=False)


def test_bad_masks_are_rejected():
    with pytest.raises(ValueError, match="at least one pixel"):
        first_click(np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="expected gt as a bool HxW numpy array, got uint8"):
        first_click(np.ones((5, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected pred of shape \(5, 5\), got \(5, 6\)"):
        next_click(np.ones((5, 5), dtype=bool), np.ones((5, 6), dtype=bool))


def test_prompts_are_x_y_with_labels_one_and_zero():
    points, labels = click_prompts([Click(x=3, y=7, positive=True), Click(1, 2, False)])
    assert points.tolist() == [[3, 7], [1, 2]] and labels.tolist() == [1, 0]
    assert points.dtype == np.int64 and labels.dtype == np.int64
    points, labels = click_prompts([])
    assert points.shape == (0, 2) and labels.shape == (0,)


def test_simulation_feeds_all_clicks_and_scores_each_round():
    gt = _rect(40, 60, 10, 30, 10, 40)  # 20x30, first click at (x=19, y=19)
    half = gt & _rect(40, 60, 0, 40, 0, 25)  # round 1: the left half only
    spill = gt | _rect(40, 60, 0, 40, 40, 60)  # round 2: the object plus a 40x20 spill
    answers = [half, spill, gt]
    calls = []

    def predict(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        calls.append((points.tolist(), labels.tolist()))
        return answers[len(calls) - 1]

    ious = simulate_clicks(predict, gt, 3)
    assert ious == pytest.approx([300 / 600, 600 / 1400, 1.0])
    assert [len(p) for p, _ in calls] == [1, 2, 3]
    assert calls[0] == ([[19, 19]], [1])
    (x2, y2), (x3, y3) = calls[1][0][1], calls[2][0][2]
    assert calls[2][1] == [1, 1, 0]  # positive in the missing half, then negative in the spill
    assert 25 <= x2 < 40 and 10 <= y2 < 30
    assert 40 <= x3 < 60 and 0 <= y3 < 40
    assert calls[2][0][:2] == calls[1][0]  # earlier clicks are repeated unchanged


def test_simulation_checks_the_predicted_mask():
    gt = _rect(10, 10, 2, 8, 2, 8)
    with pytest.raises(ValueError, match=r"after 1 clicks of shape \(10, 10\), got \(5, 5\)"):
        simulate_clicks(lambda p, lab: np.zeros((5, 5), dtype=bool), gt, 2)
    with pytest.raises(ValueError, match="n_clicks >= 1, got 0"):
        simulate_clicks(lambda p, lab: gt, gt, 0)


def test_deepest_in_a_crop_equals_the_whole_image():
    rng = np.random.default_rng(0)
    for trial in range(30):
        h, w = (int(v) for v in rng.integers(5, 40, 2))
        region = np.zeros((h, w), dtype=bool)
        for _ in range(int(rng.integers(0, 4))):  # a few rectangles, some at the border
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            region[y0 : y0 + int(rng.integers(1, h)), x0 : x0 + int(rng.integers(1, w))] = True
        ys, xs = np.nonzero(region)
        previous = [Click(x=int(x), y=int(y), positive=True) for y, x in
                    zip(ys[:2], xs[:2], strict=True)]
        full = border_distance(region)
        for c in previous:
            full[c.y, c.x] = 0.0
        flat = int(np.argmax(full))
        expected = (flat // w, flat % w, float(full.max()))
        assert deepest_in(region, previous) == pytest.approx(expected), trial
