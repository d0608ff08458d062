"""The prompted protocols on crafted predictions with known IoUs, click rounds equal to the
one-instance simulation, agreement of a model with itself, and the evaluation actor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from operators.config import (
    EvaluatedModel,
    EvaluationConfig,
    GroundTruthConfig,
    InputConfig,
    ModelConfig,
)
from operators.evaluation.clicks import simulate_clicks
from operators.evaluation.prompted import (
    LoadedModel,
    PromptedEvaluator,
    agreement_ious,
    agreement_prompts,
    box_ious,
    click_ious,
)
from operators.evaluation.sampling import read_selected
from operators.prompted.prompts import MaskChunk
from operators.shards.sample import write_sample_corpus
from tests.support import as_batch

H, W = 60, 80


class SquarePrompter:
    """A crafted model: a box prompt gives the box's pixels moved `shift` px right; a point
    prompt gives 9x9 squares around its foreground points minus those around its background
    points."""

    def __init__(self, shift: int = 0) -> None:
        self.shift = shift

    def encode(self, images):
        return [im.shape[:2] for im in images]

    def iter_masks(self, images, prompts):
        return self.masks(self.encode(images), prompts)

    def masks(self, encoded, prompts):
        for image, (h, w) in enumerate(encoded):
            idx = np.flatnonzero(prompts.image == image)
            out = torch.zeros((len(idx), h, w), dtype=torch.bool)
            for r, k in enumerate(idx):
                if prompts.has_box[k]:
                    x0, y0, x1, y1 = (int(v) for v in prompts.boxes[k])
                    out[r, y0:y1, x0 + self.shift : x1 + self.shift] = True
                for (x, y), label in zip(prompts.points[k], prompts.labels[k], strict=True):
                    if label >= 0:
                        out[r, max(int(y) - 4, 0) : int(y) + 5,
                            max(int(x) - 4, 0) : int(x) + 5] = bool(label)
            for start in range(0, len(idx), 2):  # chunks of 2, as a real prompter chunks
                yield MaskChunk(image, idx[start : start + 2], out[start : start + 2],
                                np.ones(len(idx[start : start + 2]), np.float32),
                                np.ones(len(idx[start : start + 2]), np.float32))


def _model(shift: int = 0) -> LoadedModel:
    return LoadedModel("square", SquarePrompter(shift), torch.device("cpu"), "fp32")


def _rect(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _instance(mask: np.ndarray, ann_id: int = 1) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    return {"id": ann_id, "bbox": [float(xs.min()), float(ys.min()),
                                   float(xs.max() - xs.min() + 1),
                                   float(ys.max() - ys.min() + 1)],
            "area": float(mask.sum()),
            "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}}


def test_box_prompted_iou_of_a_crafted_prediction_is_known():
    image = np.zeros((H, W, 3), np.uint8)
    a, b = _instance(_rect(10, 20, 10, 20)), _instance(_rect(30, 50, 40, 60), 2)
    exact = box_ious(_model(0), [image, image], [[a, b], [b]])
    assert [v.tolist() for v in exact] == [[1.0, 1.0], [1.0]]
    shifted = box_ious(_model(5), [image], [[a, b]])[0]
    # 10x10 moved 5 px: 50 / 150; 20x20 moved 5 px: 300 / 500
    assert shifted.tolist() == pytest.approx([1 / 3, 3 / 5])


def test_click_rounds_equal_the_one_instance_simulation():
    image = np.zeros((H, W, 3), np.uint8)
    shapes = [_rect(5, 40, 5, 30), _rect(10, 25, 40, 75) | _rect(25, 55, 60, 75),
              _rect(50, 60, 0, 80)]
    instances = [_instance(m, k) for k, m in enumerate(shapes)]
    got = click_ious(_model(), image, instances, [1, 3, 5], group=2)
    prompter = SquarePrompter()
    for k, gt in enumerate(shapes):
        def predict(points, labels):
            from operators.prompted.prompts import PromptSet, make_prompt

            ps = PromptSet.from_prompts([[make_prompt(None, points.tolist(), labels.tolist())]])
            return next(prompter.iter_masks([image], ps)).masks[0].numpy()

        ref = simulate_clicks(predict, gt, 5)
        assert [got[n][k] for n in (1, 3, 5)] == pytest.approx([ref[0], ref[2], ref[4]]), k
    assert got[5][0] > got[1][0]  # more clicks cover more of the large rectangle


def test_agreement_of_a_model_with_itself_is_one_and_shifted_is_known():
    image = np.zeros((H, W, 3), np.uint8)
    prompts = agreement_prompts(0, "sa_000000", "sa_1", (H, W), [[10, 10, 20, 20]], 6)
    assert len(prompts) == 7 and prompts[1]["box"] is None
    assert prompts == agreement_prompts(0, "sa_000000", "sa_1", (H, W), [[10, 10, 20, 20]], 6)
    assert prompts != agreement_prompts(1, "sa_000000", "sa_1", (H, W), [[10, 10, 20, 20]], 6)
    same, areas = agreement_ious(_model(), _model(), image, prompts, group=3)
    assert same.tolist() == [1.0] * 7 and areas[0] == 100
    shifted, _ = agreement_ious(_model(5), _model(), image, prompts[:1])
    assert shifted.tolist() == pytest.approx([1 / 3])


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = write_sample_corpus(str(tmp_path_factory.mktemp("corpus")), shards=1,
                               images_per_shard=3, seed=3)[0]
    item = {"shard": "sa_000000", "url": path, "container": "tar", "keys": None}
    return list(read_selected(item, "sam_tiny", InputConfig(urls=["-"])))


def test_actor_agreement_of_sam_tiny_with_itself_is_one(rows):
    tiny = ModelConfig(name="sam_tiny", seed=0)
    actor = PromptedEvaluator("agreement", [EvaluatedModel(name="sam_tiny", seed=0)],
                              EvaluationConfig(agreement_points=4), GroundTruthConfig(),
                              reference=tiny)
    out = actor(as_batch(rows[:2]))
    assert out["status"].tolist() == ["ok"] * 2
    for row, n in zip(out["results"], out["instances"], strict=True):
        parts = json.loads(row)["sam_tiny"]
        assert len(parts["agreement"]) == n and len(parts["agreement_points"]) == 4
        assert all(iou == pytest.approx(1.0) for iou, _ in parts["agreement"]
                   + parts["agreement_points"] if _ > 0)


def test_actor_box_rows_and_missing_ground_truth(rows):
    actor = PromptedEvaluator("box", [EvaluatedModel(name="sam_tiny", seed=0, label="a"),
                                      EvaluatedModel(name="sam_tiny", seed=1, label="b")],
                              EvaluationConfig(), GroundTruthConfig())
    bare = dict(rows[2], annotations_json="")
    out = actor(as_batch([rows[0], rows[1], bare]))
    assert out["status"].tolist() == ["ok", "ok", "error"]
    assert out["error"][2] == "no ground truth for this image"
    first = json.loads(out["results"][0])
    assert set(first) == {"a", "b"}
    gt = json.loads(rows[0]["annotations_json"])
    assert [area for _, area in first["a"]["box"]] == [g["area"] for g in gt]
    assert all(0 <= iou <= 1 for iou, _ in first["b"]["box"])
    with pytest.raises(ValueError, match="reference model"):
        PromptedEvaluator("agreement", [EvaluatedModel(name="sam_tiny")], EvaluationConfig(),
                          GroundTruthConfig())
