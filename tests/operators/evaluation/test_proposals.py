"""Class-agnostic proposal recall on crafted ground truth, against known answers and against a
direct pycocotools run."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from operators.evaluation.proposals import (
    AR_KEYS,
    CATEGORY,
    average_recall,
    coco_ground_truth,
    proposal_scores,
    rank_proposals,
    sa1b_to_coco_annotations,
)

H, W = 128, 160
# (y0, y1, x0, x1) per image. Areas: 100, 600 (small); 1600, 1500, 1120 (medium); 10000,
# 9600 (large); 1024 = 32**2 (small and medium)
BOXES = {
    1: [(0, 10, 0, 10), (20, 40, 0, 30), (50, 90, 0, 40), (10, 110, 50, 150)],
    2: [(0, 30, 0, 50), (0, 96, 60, 160), (100, 128, 0, 40), (40, 72, 20, 52)],
}


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _sa1b_annotations(image_id: int) -> list[dict]:
    """SA-1B-style records (as in sa_<id>.json) of the crafted rectangles."""
    out = []
    for n, (y0, y1, x0, x1) in enumerate(BOXES[image_id]):
        mask = _rect(y0, y1, x0, x1)
        out.append({"id": 1000 * image_id + n, "segmentation": _rle(mask),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()),
                    "predicted_iou": 0.9 - 0.1 * n, "stability_score": 0.95,
                    "point_coords": [[x0 + 1.0, y0 + 1.0]], "crop_box": [0, 0, W, H]})
    return out


@pytest.fixture()
def gt() -> dict:
    images = [{"id": i, "height": H, "width": W, "file_name": f"sa_{i}.jpg"} for i in BOXES]
    anns = sa1b_to_coco_annotations(_sa1b_annotations(1), image_id=1, first_id=1)
    anns += sa1b_to_coco_annotations(_sa1b_annotations(2), image_id=2, first_id=len(anns) + 1)
    return coco_ground_truth(images, anns)


def _as_detections(anns: list[dict]) -> list[dict]:
    return [{"image_id": a["image_id"], "segmentation": a["segmentation"], "score": 1.0}
            for a in anns]


def _bucket_of(area: float) -> set[str]:
    return {name for name, (lo, hi) in {"small": (0, 1024), "medium": (1024, 9216),
                                        "large": (9216, 1e10)}.items() if lo <= area <= hi}


def test_sa1b_annotations_become_coco_ground_truth(gt):
    anns = gt["annotations"]
    assert [a["id"] for a in anns] == list(range(1, 9))
    assert all(a["category_id"] == CATEGORY["id"] and a["iscrowd"] == 0 for a in anns)
    assert sorted(a["area"] for a in anns) == [100, 600, 1024, 1120, 1500, 1600, 9600, 10000]
    first = anns[0]
    assert first["bbox"] == [0, 0, 10, 10] and first["image_id"] == 1
    assert set(first) == {"id", "image_id", "category_id", "segmentation", "area", "bbox",
                          "iscrowd"}
    with pytest.raises(ValueError, match="lacks \\['area'\\]"):
        sa1b_to_coco_annotations([{"segmentation": {"size": [1, 1], "counts": ""},
                                   "bbox": [0, 0, 1, 1]}], image_id=3)
    with pytest.raises(ValueError, match="distinct annotation ids"):
        coco_ground_truth(gt["images"], anns + [anns[0]])


def test_ground_truth_fed_back_recalls_everything(gt):
    ar = average_recall(gt, _as_detections(gt["annotations"]))
    assert ar == {k: pytest.approx(1.0) for k in AR_KEYS}


def test_half_of_the_ground_truth_recalls_half(gt):
    kept = gt["annotations"][::2]
    ar = average_recall(gt, _as_detections(kept))
    total = gt["annotations"]
    assert ar["AR@1000"] == pytest.approx(len(kept) / len(total))
    for bucket in ("small", "medium", "large"):
        n_kept = sum(bucket in _bucket_of(a["area"]) for a in kept)
        n_all = sum(bucket in _bucket_of(a["area"]) for a in total)
        assert ar[f"AR_{bucket}@1000"] == pytest.approx(n_kept / n_all), bucket


def test_a_known_iou_is_matched_up_to_that_threshold(gt):
    one = {"images": gt["images"][:1], "annotations": gt["annotations"][:1],
           "categories": gt["categories"]}  # a 10x10 instance
    det = {"image_id": 1, "segmentation": _rle(_rect(0, 9, 0, 8)), "score": 0.5}  # IoU 0.72
    ar = average_recall(one, [det])
    assert ar["AR@10"] == pytest.approx(5 / 10)  # thresholds 0.50 .. 0.70 of 0.50:0.05:0.95
    assert ar["AR_small@1000"] == pytest.approx(0.5)
    assert ar["AR_medium@1000"] is None and ar["AR_large@1000"] is None


def test_only_the_best_scored_detections_count_per_budget():
    masks = [_rect(8 * i, 8 * i + 6, 0, 6) for i in range(15)]  # 15 instances in one image
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": _rle(m),
             "area": int(m.sum()), "bbox": [0, 8 * i, 6, 6], "iscrowd": 0}
            for i, m in enumerate(masks)]
    gt = coco_ground_truth([{"id": 1, "height": H, "width": W}], anns)
    hits = [{"image_id": 1, "segmentation": a["segmentation"], "score": 0.1} for a in anns]
    junk = [{"image_id": 1, "segmentation": _rle(_rect(0, 5, 100 + i, 106 + i)), "score": 0.9}
            for i in range(10)]  # outrank every hit and match nothing
    ar = average_recall(gt, hits + junk)
    assert ar["AR@10"] == 0.0
    assert ar["AR@100"] == pytest.approx(1.0) and ar["AR@1000"] == pytest.approx(1.0)
    ranked = [dict(h, score=1.0 - i / 100) for i, h in enumerate(hits)]
    assert average_recall(gt, ranked)["AR@10"] == pytest.approx(10 / 15)


def test_equals_a_direct_cocoeval_run(gt):
    rng = np.random.default_rng(0)
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(3):  # jittered copies: IoUs spread over the thresholds
            dy, dx = rng.integers(-3, 4, size=2)
            mask = _rect(max(y + dy, 0), y + h + dy, max(x + dx, 0), x + w + dx)
            dets.append({"image_id": ann["image_id"], "segmentation": _rle(mask),
                         "score": float(rng.random())})
    for i in range(30):  # background proposals
        y0, x0 = rng.integers(0, 100, size=2)
        dets.append({"image_id": int(1 + i % 2), "segmentation": _rle(_rect(y0, y0 + 9, x0,
                                                                             x0 + 11)),
                     "score": float(rng.random())})
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)

    ours = average_recall(gt, dets)

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        coco_dt = coco.loadRes([dict(d, category_id=1) for d in copy.deepcopy(dets)])
        e = COCOeval(coco, coco_dt, "segm")
        e.params.useCats = 0
        e.params.maxDets = [10, 100, 1000]
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert [ours[k] for k in AR_KEYS] == pytest.approx(list(e.stats[6:12]))
    assert 0.0 < ours["AR@10"] < ours["AR@100"] < 1.0  # the data exercises the budgets
    assert gt == gt_before and dets == dets_before  # inputs are not modified


def test_cocoeval_prints_nothing(gt, capsys):
    average_recall(gt, _as_detections(gt["annotations"]))
    assert capsys.readouterr().out == ""


def test_no_detections_recall_nothing(gt):
    ar = average_recall(gt, [])
    assert ar == dict.fromkeys(AR_KEYS, 0.0)
    empty = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
    assert average_recall(empty, []) == dict.fromkeys(AR_KEYS)


def test_detections_must_fit_the_ground_truth(gt):
    ok = _as_detections(gt["annotations"])[0]
    with pytest.raises(ValueError, match="ground-truth images, got image_id 7"):
        average_recall(gt, [dict(ok, image_id=7)])
    small = _rle(np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError, match=r"size \[128, 160\] for image 1, got \[10, 10\]"):
        average_recall(gt, [dict(ok, segmentation=small)])


def test_ranking_by_mean_of_predicted_iou_and_stability():
    np.testing.assert_allclose(proposal_scores(np.array([0.9, 0.5]), np.array([0.7, 0.9])),
                               [0.8, 0.7])
    masks = [{"segmentation": {"size": [1, 1], "counts": str(i)}, "predicted_iou": p,
              "stability_score": s} for i, (p, s) in enumerate([(0.5, 0.5), (0.9, 0.9),
                                                                  (0.8, 0.6), (0.6, 0.8),
                                                                  (1.0, 0.2)])]
    ranked = rank_proposals(4, masks, limit=3)
    assert [r["segmentation"]["counts"] for r in ranked] == ["1", "2", "3"]  # 0.7 tie: order
    assert [r["score"] for r in ranked] == pytest.approx([0.9, 0.7, 0.7])
    assert all(r["image_id"] == 4 for r in ranked)
    rng = np.random.default_rng(1)
    many = [{"segmentation": {"size": [1, 1], "counts": str(i)}, "predicted_iou": p,
             "stability_score": s} for i, (p, s) in enumerate(rng.random((1200, 2)))]
    top = rank_proposals(1, many)
    assert len(top) == 1000
    cut = min(r["score"] for r in top)
    assert sum((m["predicted_iou"] + m["stability_score"]) / 2 > cut for m in many) <= 1000
    assert rank_proposals(1, []) == []


def test_ranked_sa1b_masks_recall_their_own_annotations(gt):
    dets = rank_proposals(1, _sa1b_annotations(1)) + rank_proposals(2, _sa1b_annotations(2))
    assert average_recall(gt, dets)["AR@1000"] == pytest.approx(1.0)


def test_categories_and_crowds_of_a_coco_ground_truth_are_pooled(gt):
    multi = copy.deepcopy(gt)
    multi["categories"] = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    for n, ann in enumerate(multi["annotations"]):
        ann["category_id"] = 3 if n % 2 else 7
    multi["annotations"][0]["iscrowd"] = 1  # a crowd region is neither to find nor a miss
    dets = _as_detections(multi["annotations"][1:])
    assert average_recall(multi, dets) == {k: pytest.approx(1.0) for k in AR_KEYS}
    assert average_recall(multi, dets[::2])["AR@1000"] == pytest.approx(4 / 7)


def test_a_mask_without_stability_ranks_by_its_predicted_iou():
    seg = {"size": [1, 1], "counts": "01"}
    masks = [{"segmentation": seg, "predicted_iou": 0.4, "stability_score": None},
             {"segmentation": seg, "predicted_iou": 0.9, "stability_score": 0.1}]
    assert [r["score"] for r in rank_proposals(1, masks)] == pytest.approx([0.5, 0.4])
