"""SAM 2.1 in the operators: prompted masks (SamPrompter, what `segment` and `evaluate` run)
against the official SAM2ImagePredictor one prompt at a time, on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import build_model
from operators.prompted.prompts import PromptSet, make_prompt
from operators.prompted.sam import SamPrompter
from tests.support import smooth_image

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

IMAGES = [smooth_image(90, 160, 1), smooth_image(120, 70, 2), smooth_image(64, 64, 3)]
PROMPTS = [
    [make_prompt([10, 12, 70, 50]), make_prompt(None, [[30, 40]]),
     make_prompt(None, [[30, 40], [5, 7.5]], [1, 0]), make_prompt([5, 5, 150, 80], [[33, 22]])],
    [make_prompt([1, 2, 60, 100]), make_prompt(None, [[10, 90]]), make_prompt([0, 0, 30, 30])],
    [make_prompt(None, [[20, 20], [40, 40], [50, 10]], [1, 1, 0])],
]


@pytest.mark.parametrize(("multimask", "decoder_batch_size"), [(True, 64), (True, 2),
                                                                (False, 3)])
def test_prompter_equals_official_predictor_one_prompt_at_a_time(multimask, decoder_batch_size):
    from tests.golden.make_sam2_official import official_predictor

    ours = build_model("sam2_tiny_test", seed=3)
    try:
        ref = official_predictor(ours)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam2 not installed: {e}")
    prompter = SamPrompter(ours, multimask=multimask, batch_size=2,
                           decoder_batch_size=decoder_batch_size, upscale_batch_size=2)
    ps = PromptSet.from_prompts(PROMPTS)
    got = {}
    for chunk in prompter.iter_masks(IMAGES, ps):
        for k, m, v in zip(chunk.index.tolist(), chunk.masks, chunk.iou, strict=True):
            got[k] = (m.numpy(), float(v))
    assert sorted(got) == list(range(len(ps)))
    k = 0
    for image, prompts in zip(IMAGES, PROMPTS, strict=True):
        ref.set_image(image)
        for p in prompts:
            kw = {"box": np.array(p["box"])} if p["box"] is not None else {}
            if p["points"]:
                kw.update(point_coords=np.array(p["points"]), point_labels=np.array(p["labels"]))
            masks, iou, _ = ref.predict(**kw, multimask_output=multimask)
            best = int(np.argmax(iou))
            mask, score = got[k]
            assert mask.shape == masks[best].shape
            assert (mask == masks[best]).mean() >= 0.999, k
            assert score == pytest.approx(float(iou[best]), rel=5e-3, abs=1e-5)
            k += 1
    assert k == len(ps) and torch.is_tensor(chunk.masks)
