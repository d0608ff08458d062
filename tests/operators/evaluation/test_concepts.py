"""AP of concept labels (operators/evaluation/concepts.py) on hand-computable cases: names
matched stripped and case-insensitive, perfect labels AP 1, a label of the wrong category
halves the mean exactly, ranking decides what a false positive costs, no detections AP 0."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from operators.evaluation.binding import GroundTruthMismatch
from operators.evaluation.concepts import (
    average_precision,
    concept_detections,
    concept_instances,
    ground_truth_categories,
    match_categories,
    refuse_without_match,
)

H = W = 40


def _square(x: int, y: int, side: int) -> dict:
    """An annotation {segmentation (str counts), bbox XYWH, area} of a square in an HxW image."""
    m = np.zeros((H, W), np.uint8)
    m[y:y + side, x:x + side] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"segmentation": {"size": [H, W], "counts": rle["counts"].decode()},
            "bbox": [float(x), float(y), float(side), float(side)], "area": side * side}


DOG, CAT = _square(2, 2, 12), _square(20, 20, 15)  # one of each in the image
CATEGORIES = [{"id": 3, "name": " Dog"}, {"id": 7, "name": "cat"}, {"id": 9, "name": "bird"}]


def _gt() -> dict:
    anns = concept_instances([{**DOG, "category_id": 3}, {**CAT, "category_id": 7}], 1, 1, H,
                             W, "the test image")
    return {"images": [{"id": 1, "height": H, "width": W}], "annotations": anns,
            "categories": CATEGORIES}


def _ap(labels: list[dict], kind: str = "mask") -> dict:
    gt_cats = ground_truth_categories(CATEGORIES, "the test ground truth")
    match = match_categories(["dog", "cat", "horse"], gt_cats)
    boxes, masks = concept_detections(1, H, W, labels, match.gt_id_of)
    return average_precision(_gt(), boxes if kind == "box" else masks, kind,
                             sorted(set(match.gt_id_of.values())))


def test_names_match_stripped_and_case_insensitive_and_the_rest_is_reported():
    gt_cats = ground_truth_categories(CATEGORIES, "gt")
    match = match_categories(["DOG ", "cat", "horse"], gt_cats)
    assert match.gt_id_of == {"DOG ": 3, "cat": 7}
    assert match.as_dict() == {"matched": [" Dog", "cat"], "labels_only": ["horse"],
                               "ground_truth_only": ["bird"]}
    none = match_categories(["horse", "zebra"], gt_cats)
    with pytest.raises(GroundTruthMismatch, match=r"share no category.*ground truth's "
                       r"\[' Dog', 'cat', 'bird'\], got \['horse', 'zebra'\]"):
        refuse_without_match("x", ["horse", "zebra"], gt_cats, none)
    with pytest.raises(ValueError, match="expected distinct category names.*'cat' and 'CAT'"):
        ground_truth_categories([{"id": 1, "name": "cat"}, {"id": 2, "name": "CAT"}], "gt")
    with pytest.raises(ValueError, match="expected COCO `categories` in gt"):
        ground_truth_categories([], "gt")


@pytest.mark.parametrize("kind", ["box", "mask"])
def test_perfect_labels_have_ap_one(kind):
    ap = _ap([{**DOG, "category": "dog", "score": 0.9}, {**CAT, "category": "cat", "score": 0.8},
              {**CAT, "category": "horse", "score": 0.99}], kind)  # horse: not evaluated
    assert [ap["AP"], ap["AP50"], ap["AP75"]] == pytest.approx([1.0, 1.0, 1.0])
    assert ap["per_category"] == {" Dog": pytest.approx(1.0), "cat": pytest.approx(1.0)}
    # 144 and 225 px: both small; no medium or large ground truth
    assert ap["AP_small"] == pytest.approx(1.0) and ap["AP_medium"] is None


def test_a_label_of_the_wrong_category_costs_exactly_what_it_should():
    # the cat labelled "dog", ranked below the true dog: dog AP stays 1, cat AP 0 -> mean 0.5
    low = _ap([{**DOG, "category": "dog", "score": 0.9}, {**CAT, "category": "dog", "score": 0.5}])
    assert low["per_category"] == {" Dog": pytest.approx(1.0), "cat": 0.0}
    assert low["AP"] == pytest.approx(0.5)
    # ranked above it: dog precision is 1/2 at every recall -> dog AP 0.5, mean 0.25
    high = _ap([{**DOG, "category": "dog", "score": 0.5},
                {**CAT, "category": "dog", "score": 0.9}])
    assert high["per_category"][" Dog"] == pytest.approx(0.5)
    assert high["AP"] == pytest.approx(0.25)


def test_no_detections_give_zero_where_there_is_ground_truth():
    ap = _ap([])
    assert ap["AP"] == 0.0 and ap["AP_small"] == 0.0 and ap["AP_large"] is None
    assert ap["per_category"] == {" Dog": 0.0, "cat": 0.0}


def test_masks_of_another_size_are_refused():
    other = {**DOG, "segmentation": {"size": [H + 1, W], "counts": DOG["segmentation"]["counts"]},
             "category": "dog", "score": 0.9}
    with pytest.raises(ValueError, match=r"expected label masks of the image's size \[40, 40\], "
                                         r"got \[41, 40\]"):
        concept_detections(1, H, W, [other], {"dog": 3})
