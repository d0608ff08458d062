"""Our SAM against the official implementation, same random weights, same images.

Targets from the issue: embeddings to cosine 0.99999, mask logits to 5e-3 relative.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import Predictor, build_model
from tests.models.common import max_rel
from tests.support import official, official_tiny_sam, smooth_image


def _pair(name: str, seed: int = 0):
    sa = official()
    ours = build_model(name, seed=seed)
    theirs = official_tiny_sam(sa) if name == "sam_tiny" else sa.sam_model_registry[
        name.removeprefix("sam_")]()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return sa, ours, theirs.eval()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()



PROMPTS = [
    dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[30.0, 40.0], [5.0, 7.5]]), point_labels=np.array([1, 0])),
    dict(box=np.array([10.0, 12.0, 70.0, 50.0])),
    dict(point_coords=np.array([[33.0, 22.0]]), point_labels=np.array([1]),
         box=np.array([10.0, 12.0, 70.0, 50.0])),
]


@pytest.mark.parametrize("hw", [(90, 160), (200, 75), (128, 128), (17, 300)])
def test_tiny_embedding_and_masks_match_official(hw):
    sa, ours, theirs = _pair("sam_tiny", seed=1)
    image = smooth_image(*hw, seed=hw[0])
    ref = sa.SamPredictor(theirs)
    ref.set_image(image)
    emb = Predictor(ours).embed([image])
    assert emb.shape == ref.features.shape
    assert _cosine(emb, ref.features) >= 0.99999
    for multimask in (True, False):
        for prompt in PROMPTS:
            ref_masks, ref_iou, ref_low = ref.predict(
                **prompt, multimask_output=multimask, return_logits=True
            )
            out = Predictor(ours).predict(
                emb[0], hw,
                point_coords=prompt.get("point_coords"),
                point_labels=prompt.get("point_labels"),
                boxes=prompt.get("box"),
                multimask=multimask,
            )
            assert out["masks"].shape[1:] == ref_masks.shape
            assert max_rel(out["masks"][0], torch.from_numpy(ref_masks)) < 5e-3
            assert max_rel(out["low_res_logits"][0], torch.from_numpy(ref_low)) < 5e-3
            np.testing.assert_allclose(out["iou_predictions"][0].numpy(), ref_iou, rtol=5e-3,
                                       atol=1e-5)


def test_tiny_mask_input_matches_official():
    sa, ours, theirs = _pair("sam_tiny", seed=2)
    image = smooth_image(100, 140, seed=3)
    ref = sa.SamPredictor(theirs)
    ref.set_image(image)
    _, _, low = ref.predict(point_coords=np.array([[50.0, 50.0]]), point_labels=np.array([1]))
    mask_input = low[:1]  # 1x32x32
    ref_masks, _, _ = ref.predict(point_coords=np.array([[50.0, 50.0]]),
                                  point_labels=np.array([1]), mask_input=mask_input,
                                  multimask_output=False, return_logits=True)
    emb = Predictor(ours).embed([image])
    out = Predictor(ours).predict(emb[0], (100, 140), point_coords=[[50.0, 50.0]],
                                  point_labels=[1], mask_input=torch.from_numpy(mask_input)[None],
                                  multimask=False)
    assert max_rel(out["masks"][0], torch.from_numpy(ref_masks)) < 5e-3


def test_batched_embed_of_different_sizes_equals_official_one_by_one():
    sa, ours, theirs = _pair("sam_tiny", seed=4)
    images = [smooth_image(60, 90, 1), smooth_image(128, 20, 2), smooth_image(300, 301, 3)]
    batch = Predictor(ours).embed(images)
    for i, image in enumerate(images):
        ref = sa.SamPredictor(theirs)
        ref.set_image(image)
        assert _cosine(batch[i], ref.features[0]) >= 0.99999


@pytest.mark.slow
def test_full_size_vit_b_matches_official():
    """The real ViT-B at 1024: 64x64 grid, 14x14 windows padded to 70, 12 blocks."""
    torch.manual_seed(0)
    sa, ours, theirs = _pair("sam_vit_b", seed=5)
    image = smooth_image(480, 640, seed=6)
    ref = sa.SamPredictor(theirs)
    ref.set_image(image)
    emb = Predictor(ours).embed([image])
    assert emb.shape == (1, 256, 64, 64)
    assert _cosine(emb, ref.features) >= 0.99999
    prompt = PROMPTS[3]
    ref_masks, ref_iou, _ = ref.predict(**prompt, multimask_output=True, return_logits=True)
    out = Predictor(ours).predict(emb[0], (480, 640), point_coords=prompt["point_coords"],
                                  point_labels=prompt["point_labels"], boxes=prompt["box"])
    assert max_rel(out["masks"][0], torch.from_numpy(ref_masks)) < 5e-3
    np.testing.assert_allclose(out["iou_predictions"][0].numpy(), ref_iou, rtol=5e-3, atol=1e-5)
