"""FastSAM's prompted masks equal the official FastSAMPrompt selection (box_prompt,
point_prompt), written out plainly here on the everything-mode masks of the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build_model
from operators.config import GeneratorConfig
from operators.everything.one_pass import segment_everything
from operators.prompted.fastsam import FastSamPrompter, official_box
from operators.prompted.prompts import PromptSet, make_prompt
from operators.shards.sample import _make_image
from tests.golden.make_fastsam import DATA, golden_state_dict

DETECTION = {"detection_conf": 0.25, "detection_iou": 0.9, "detection_imgsz": 320}


@pytest.fixture(scope="module")
def scene():
    """(FastSAM-s with the golden weights, an image of shapes, its shapes' masks)."""
    with np.load(DATA / "golden_fastsam_s.npz") as f:
        bn_mean, bn_var = f["bn_mean"], f["bn_var"]
    model = build_model("fastsam_s")
    model.load_state_dict(golden_state_dict(model, bn_mean, bn_var))
    image, shapes = _make_image(np.random.default_rng(5), 150, 200)
    return model.eval(), image, shapes


def _box_prompt(masks: np.ndarray, box: list[float]) -> np.ndarray:
    """The official box_prompt for one box on retina masks (bool NxHxW)."""
    h, w = masks.shape[1:]
    b = [round(box[0]) if round(box[0]) > 0 else 0, round(box[1]) if round(box[1]) > 0 else 0,
         round(box[2]) if round(box[2]) < w else w, round(box[3]) if round(box[3]) < h else h]
    box_area = (b[3] - b[1]) * (b[2] - b[0])
    inside = masks[:, b[1]:b[3], b[0]:b[2]].sum(axis=(1, 2))
    iou = inside / (box_area + masks.sum(axis=(1, 2)) - inside)
    return masks[int(np.argmax(iou))]


def _point_prompt(masks: np.ndarray, points: list[list[int]], labels: list[int]) -> np.ndarray:
    """The official point_prompt on retina masks (bool NxHxW)."""
    one = np.zeros(masks.shape[1:])
    order = sorted(range(len(masks)), key=lambda i: masks[i].sum(), reverse=True)
    for i in order:
        for (x, y), label in zip(points, labels, strict=True):
            if masks[i][y, x] and label == 1:
                one[masks[i]] = 1
            if masks[i][y, x] and label == 0:
                one[masks[i]] = 0
    return one >= 1


def test_box_and_point_selection_equal_the_official(scene):
    model, image, shapes = scene
    prompts = []
    for shape in shapes:
        ys, xs = np.nonzero(shape)
        mid = len(ys) // 2
        prompts += [make_prompt([xs.min() - 0.5, ys.min() + 0.5, xs.max() + 1.5, ys.max() + 1]),
                    make_prompt(None, [[xs[mid] + 0.7, ys[mid]]]),
                    make_prompt(None, [[xs[0], ys[0]], [xs[-1], ys[-1]]], [1, 0])]
    prompts.append(make_prompt(None, [[5, 5], [500, 5]], [1, 1]))  # one point off the image
    prompts.append(make_prompt([-20, -20, 400, 300]))  # clamped to the image
    ps = PromptSet.from_prompts([prompts])
    prompter = FastSamPrompter(model, GeneratorConfig(**DETECTION), upscale_batch_size=100)
    got = {}
    for chunk in prompter.iter_masks([image], ps):
        for k, mask, score in zip(chunk.index.tolist(), chunk.masks, chunk.iou, strict=True):
            got[k] = (mask.numpy(), float(score))
    everything = segment_everything(model, [image], **DETECTION)[0]
    masks = (everything["mask_logits"] > 0).numpy()
    scores = everything["scores"].numpy()
    assert len(masks) > 50 and sorted(got) == list(range(len(prompts)))
    for k, p in enumerate(prompts):
        if p["box"] is not None:
            ref = _box_prompt(masks, p["box"])
            chosen = [i for i in range(len(masks)) if (masks[i] == ref).all()]
            assert got[k][1] == pytest.approx(scores[chosen[0]])
        else:
            pts = [[int(x), int(y)] for x, y in p["points"]]
            inside = [(x, y) for x, y in pts if x < masks.shape[2]]
            ref = _point_prompt(masks, [list(q) for q in inside],
                                [lab for (x, _), lab in zip(pts, p["labels"], strict=True)
                                 if x < masks.shape[2]])
        assert (got[k][0] == ref).all(), (k, p)
    assert any(got[k][0].any() for k in range(len(prompts)))  # the selection found masks


def test_official_box_rounding_and_refusals(scene):
    assert official_box(np.array([-3.4, 2.5, 10.5, 99.0]), (50, 60)) == (0, 2, 10, 50)
    model, image, _ = scene
    prompter = FastSamPrompter(model, GeneratorConfig(**DETECTION))
    both = PromptSet.from_prompts([[make_prompt([0, 0, 5, 5], [[1, 1]])]])
    with pytest.raises(ValueError, match="not by both"):
        list(prompter.iter_masks([image], both))
    with pytest.raises(ValueError, match="one-pass model"):
        FastSamPrompter(build_model("sam_tiny"))
    nothing = FastSamPrompter(model, GeneratorConfig(**{**DETECTION, "detection_conf": 1.0}))
    chunks = list(nothing.iter_masks([image], PromptSet.from_prompts(
        [[make_prompt([0, 0, 50, 50]), make_prompt(None, [[3, 3]])]])))
    assert all(not c.masks.any() and (c.iou == 0).all() for c in chunks)
    assert sum(len(c.index) for c in chunks) == 2
    assert torch.is_tensor(chunks[0].masks)
