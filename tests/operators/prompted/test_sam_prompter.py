"""SAM-design prompted masks: batched over images and prompts, equal to one prompt at a time
through the official SamPredictor (same weights) and through our Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import Predictor, build_model
from operators.prompted.prompts import PromptSet, image_masks, make_prompt
from operators.prompted.sam import SamPrompter
from tests.support import official, official_tiny_sam, smooth_image

IMAGES = [smooth_image(90, 160, 1), smooth_image(120, 70, 2), smooth_image(64, 64, 3)]
PROMPTS = [
    [make_prompt([10, 12, 70, 50]), make_prompt(None, [[30, 40]]),
     make_prompt(None, [[30, 40], [5, 7.5]], [1, 0]), make_prompt([5, 5, 150, 80], [[33, 22]])],
    [make_prompt([1, 2, 60, 100]), make_prompt(None, [[10, 90]]), make_prompt([0, 0, 30, 30])],
    [make_prompt(None, [[20, 20], [40, 40], [50, 10]], [1, 1, 0])],
]


@pytest.fixture(scope="module")
def model():
    return build_model("sam_tiny", seed=1)


def _ours(model, multimask: bool, decoder_batch_size: int, upscale_batch_size: int):
    prompter = SamPrompter(model, multimask=multimask, batch_size=2,
                           decoder_batch_size=decoder_batch_size,
                           upscale_batch_size=upscale_batch_size)
    ps = PromptSet.from_prompts(PROMPTS)
    masks, iou, seen = {}, {}, []
    for chunk in prompter.iter_masks(IMAGES, ps):
        assert chunk.masks.dtype == torch.bool
        assert tuple(chunk.masks.shape[1:]) == IMAGES[chunk.image].shape[:2]
        assert (ps.image[chunk.index] == chunk.image).all()
        seen += chunk.index.tolist()
        for k, m, v in zip(chunk.index.tolist(), chunk.masks, chunk.iou, strict=True):
            masks[k], iou[k] = m.numpy(), float(v)
    assert sorted(seen) == list(range(len(ps)))  # each prompt exactly once
    return masks, iou


def _one_by_one(predict, multimask: bool):
    """Per prompt: (the chosen mask, its predicted IoU) from `predict(image_index, prompt)`,
    which returns (masks CxHxW, iou C) as the official predictor does."""
    out, k = {}, 0
    for i, prompts in enumerate(PROMPTS):
        for p in prompts:
            masks, iou = predict(i, p, multimask)
            best = int(np.argmax(iou))
            out[k] = (masks[best], float(iou[best]))
            k += 1
    return out


@pytest.mark.parametrize(("multimask", "decoder", "upscale"),
                         [(True, 64, 64), (True, 3, 1), (False, 2, 64)])
def test_equals_our_predictor_one_prompt_at_a_time(model, multimask, decoder, upscale):
    predictor = Predictor(model)
    emb = predictor.embed(IMAGES)

    def predict(i, p, multimask):
        kw = {"boxes": p["box"]} if p["box"] is not None else {}
        if p["points"]:
            kw.update(point_coords=p["points"], point_labels=p["labels"])
        out = predictor.predict(emb[i], IMAGES[i].shape[:2], multimask=multimask,
                                return_logits=False, **kw)
        return out["masks"][0].numpy(), out["iou_predictions"][0].numpy()

    masks, iou = _ours(model, multimask, decoder, upscale)
    for k, (mask, score) in _one_by_one(predict, multimask).items():
        assert (masks[k] == mask).all(), k
        assert iou[k] == pytest.approx(score, abs=1e-5)


def test_matches_the_official_predictor_loop(model):
    sa = official()
    theirs = official_tiny_sam(sa)
    theirs.load_state_dict(model.state_dict(), strict=True)
    predictor = sa.SamPredictor(theirs.eval())

    def predict(i, p, multimask):
        predictor.set_image(IMAGES[i])
        kw = {"box": np.array(p["box"])} if p["box"] is not None else {}
        if p["points"]:
            kw.update(point_coords=np.array(p["points"]), point_labels=np.array(p["labels"]))
        masks, iou, _ = predictor.predict(multimask_output=multimask, **kw)
        return masks, iou

    masks, iou = _ours(model, True, 4, 64)
    for k, (mask, score) in _one_by_one(predict, True).items():
        agree = (masks[k] == mask).mean()
        assert agree >= 0.999, (k, agree)  # logits within float rounding of the official's
        assert iou[k] == pytest.approx(score, abs=1e-4)


def test_image_masks_returns_prompt_order_and_refuses_other_images(model):
    prompter = SamPrompter(model, decoder_batch_size=2, upscale_batch_size=1)
    ps = PromptSet.from_prompts([PROMPTS[0]])
    encoded = prompter.encode([IMAGES[0]])
    masks, iou, stability = image_masks(prompter, encoded, IMAGES[0].shape[:2], ps)
    ref, ref_iou = _ours(model, True, 64, 64)
    assert masks.shape == (4, 90, 160)
    for k in range(4):
        assert (masks[k].numpy() == ref[k]).all()
        assert iou[k] == pytest.approx(ref_iou[k], abs=1e-6)
    assert ((stability >= 0) & (stability <= 1)).all()
    with pytest.raises(ValueError, match="one image"):
        image_masks(prompter, encoded, (90, 160), PromptSet.from_prompts(PROMPTS[:2]))
    with pytest.raises(ValueError, match="promptable model"):
        SamPrompter(torch.nn.Linear(2, 2))


def test_efficient_sam_with_its_own_prompt_tokens():
    """EfficientSAM (a box as two corner tokens, every prompt padded to 6 tokens, the image
    stretched) gives, batched, its one-prompt-at-a-time masks."""
    model = build_model("efficient_sam_vitt", seed=0)
    image = smooth_image(96, 128, 4)
    prompts = [make_prompt([10, 8, 90, 70]), make_prompt(None, [[40, 30], [5, 5]], [1, 0]),
               make_prompt([20, 20, 120, 90], [[60, 50]])]
    prompter = SamPrompter(model, decoder_batch_size=2, upscale_batch_size=2)
    encoded = prompter.encode([image])  # the embedding both use (one encoder run)
    masks, iou, _ = image_masks(prompter, encoded, (96, 128), PromptSet.from_prompts([prompts]))
    predictor = Predictor(model)
    emb = encoded.embeddings
    for k, p in enumerate(prompts):
        kw = {"boxes": p["box"]} if p["box"] is not None else {}
        if p["points"]:
            kw.update(point_coords=p["points"], point_labels=p["labels"])
        out = predictor.predict(emb[0], (96, 128), return_logits=False, **kw)
        best = int(out["iou_predictions"][0].argmax())
        assert (masks[k].numpy() == out["masks"][0, best].numpy()).mean() >= 0.999
        assert iou[k] == pytest.approx(float(out["iou_predictions"][0, best]), abs=1e-4)
