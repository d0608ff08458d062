"""Our SAM 2.1 against the official implementation (PyPI `sam2==1.1.0`, the code of
facebookresearch/sam2) on the same seeded random weights, through the official
`SAM2ImagePredictor` (set_image / predict).

Targets: image embedding and high-res features to 1e-4 relative (max abs difference over max
abs value); low-res and full-size mask logits to 5e-3 relative and IoU predictions to rtol
5e-3 (the SAM 1 tolerances, tests/models/test_sam_parity.py), for point, box and point+box
prompts, multimask and single mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import HighResPromptableModel, PromptableModel, build_model
from models.sam2 import LOW_RES_CLAMP
from tests.models.common import max_rel
from tests.support import smooth_image

# SAM2Transforms scripts its resize and normalisation (torch.jit.script, deprecated in torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

PROMPTS = [
    dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[30.0, 40.0], [5.0, 7.5]]), point_labels=np.array([1, 0])),
    dict(box=np.array([10.0, 12.0, 70.0, 50.0])),
    dict(point_coords=np.array([[33.0, 22.0]]), point_labels=np.array([1]),
         box=np.array([10.0, 12.0, 70.0, 50.0])),
]


def _pair(name: str, seed: int):
    """(our model with seeded weights, the official SAM2ImagePredictor on the same weights);
    skips the test without the official package."""
    from tests.golden.make_sam2_official import official_predictor

    ours = build_model(name, seed=seed)
    try:
        return ours, official_predictor(ours)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam2 not installed: {e}")



def _ours_predict(model, feats, orig_hw, prompt, multimask, mask_input=None):
    """Our model through its protocol methods, as the jobs call them (float64 transforms cast
    to float32, as the official predictor's float32 transforms)."""
    coords = labels = boxes = None
    if "point_coords" in prompt:
        coords = model.transform_coords(torch.from_numpy(prompt["point_coords"])[None],
                                        orig_hw).float()
        labels = torch.from_numpy(prompt["point_labels"])[None].int()
    if "box" in prompt:
        boxes = model.transform_boxes(torch.from_numpy(prompt["box"])[None], orig_hw).float()
    low, iou = model.decode(feats["image_embed"], coords, labels, boxes, mask_input=mask_input,
                            multimask_output=multimask, high_res_features=feats["high_res_feats"])
    return model.postprocess_masks(low, orig_hw), iou, low


def _embed(model, image):
    pixels, hw = model.prepare_image(image)
    with torch.inference_mode():
        return model.embed_images_with_features(torch.from_numpy(pixels)[None].permute(0, 3, 1, 2),
                                                torch.tensor([hw]))


def test_sam2_follows_the_high_res_protocol():
    model = build_model("sam2_tiny_test", seed=0)
    assert isinstance(model, PromptableModel) and isinstance(model, HighResPromptableModel)
    sam1 = build_model("sam_tiny", seed=0)
    assert isinstance(sam1, PromptableModel) and not isinstance(sam1, HighResPromptableModel)
    with pytest.raises(ValueError, match="expected high_res_features"):
        model.decode(torch.zeros(1, *model.embedding_shape),
                     point_coords=torch.zeros(1, 1, 2), point_labels=torch.ones(1, 1))


@pytest.mark.parametrize("hw", [(90, 160), (200, 75), (256, 256), (17, 300), (600, 410)])
def test_tiny_embedding_high_res_and_masks_match_official(hw):
    ours, ref = _pair("sam2_tiny_test", seed=1)
    image = smooth_image(*hw, seed=hw[0])
    ref.set_image(image)
    feats = _embed(ours, image)
    theirs = ref._features
    assert feats["image_embed"].shape == theirs["image_embed"].shape == (1, 64, 16, 16)
    assert max_rel(feats["image_embed"], theirs["image_embed"]) <= 1e-4
    for a, b in zip(feats["high_res_feats"], theirs["high_res_feats"], strict=True):
        assert a.shape == b.shape
        assert max_rel(a, b) <= 1e-4
    for multimask in (True, False):
        for prompt in PROMPTS:
            ref_masks, ref_iou, ref_low = ref.predict(**prompt, multimask_output=multimask,
                                                      return_logits=True)
            with torch.inference_mode():
                masks, iou, low = _ours_predict(ours, feats, hw, prompt, multimask)
            assert masks.shape[1:] == ref_masks.shape
            assert max_rel(masks[0], torch.from_numpy(ref_masks)) < 5e-3
            # the official predictor clamps the low-res logits it returns (not the masks)
            low = low.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)
            assert max_rel(low[0], torch.from_numpy(ref_low)) < 5e-3
            np.testing.assert_allclose(iou[0].numpy(), ref_iou, rtol=5e-3, atol=1e-5)


def test_tiny_mask_input_matches_official():
    ours, ref = _pair("sam2_tiny_test", seed=2)
    image = smooth_image(100, 140, seed=3)
    ref.set_image(image)
    prompt = dict(point_coords=np.array([[50.0, 50.0]]), point_labels=np.array([1]))
    _, _, low = ref.predict(**prompt)
    ref_masks, ref_iou, _ = ref.predict(**prompt, mask_input=low[:1], multimask_output=False,
                                        return_logits=True)
    feats = _embed(ours, image)
    with torch.inference_mode():
        masks, iou, _ = _ours_predict(ours, feats, (100, 140), prompt, False,
                                      mask_input=torch.from_numpy(low[:1])[None])
    assert max_rel(masks[0], torch.from_numpy(ref_masks)) < 5e-3
    np.testing.assert_allclose(iou[0].numpy(), ref_iou, rtol=5e-3, atol=1e-5)


def test_dynamic_single_mask_equals_official_on_stable_and_unstable_masks():
    ours, ref = _pair("sam2_tiny_test", seed=5)
    gen = torch.Generator().manual_seed(0)
    masks = torch.randn(6, 4, 64, 64, generator=gen)
    masks[:3, 0] = masks[:3, 0].sign() * 5  # far from 0: stable single masks
    iou = torch.rand(6, 4, generator=gen)
    mine = ours.sam_mask_decoder._dynamic_single_mask(masks, iou)
    theirs = ref.model.sam_mask_decoder._dynamic_multimask_via_stability(masks, iou)
    assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[1])
    # both branches ran: the stable ones keep token 0, the others take a multimask output
    assert torch.equal(mine[0][:3, 0], masks[:3, 0])
    assert not any(torch.equal(mine[0][i, 0], masks[i, 0]) for i in range(3, 6))


def test_batched_decode_of_two_images_equals_one_by_one():
    """Prompts of several images per decoder call (each image's prompts contiguous), the
    high-res features broadcast per image, as everything mode and segment call decode."""
    model = build_model("sam2_tiny_test", seed=6)
    images = [smooth_image(90, 160, 1), smooth_image(150, 120, 2)]
    pixels = torch.stack([torch.from_numpy(model.prepare_image(im)[0]) for im in images])
    with torch.inference_mode():
        feats = model.embed_images_with_features(pixels.permute(0, 3, 1, 2))
        coords = torch.tensor([[[10.0, 20.0]], [[100.0, 30.0]], [[50.0, 200.0]],
                               [[5.0, 5.0]]])
        labels = torch.ones(4, 1, dtype=torch.int)
        low, iou = model.decode(feats["image_embed"], coords, labels,
                                high_res_features=feats["high_res_feats"])
        for p in range(4):
            i = p // 2
            one_low, one_iou = model.decode(
                feats["image_embed"][i : i + 1], coords[p : p + 1], labels[p : p + 1],
                high_res_features=[f[i : i + 1] for f in feats["high_res_feats"]])
            torch.testing.assert_close(low[p : p + 1], one_low, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(iou[p : p + 1], one_iou, rtol=1e-5, atol=1e-6)


def test_batched_embedding_equals_official_set_image_batch():
    ours, ref = _pair("sam2_tiny_test", seed=8)
    images = [smooth_image(60, 90, 1), smooth_image(300, 40, 2), smooth_image(256, 256, 3)]
    ref.set_image_batch(images)
    pixels = torch.stack([torch.from_numpy(ours.prepare_image(im)[0]) for im in images])
    with torch.inference_mode():
        feats = ours.embed_images_with_features(pixels.permute(0, 3, 1, 2))
    assert max_rel(feats["image_embed"], ref._features["image_embed"]) <= 1e-4
    for a, b in zip(feats["high_res_feats"], ref._features["high_res_feats"], strict=True):
        assert max_rel(a, b) <= 1e-4


@pytest.mark.parametrize("name", [
    "sam2_1_hiera_t",
    *[pytest.param(n, marks=pytest.mark.slow)
      for n in ("sam2_1_hiera_s", "sam2_1_hiera_b_plus", "sam2_1_hiera_l")],
])
def test_full_size_matches_official(name):
    """SAM 2.1 at 1024 (Hiera-T: about 5 s on 2 cores): 256x256 tokens, 8x8 / 4x4 / 14x14 /
    7x7 windows (the 64 and 32 grids padded to 70 and 35; Hiera-L: 16x16 and 8x8, no
    padding), global blocks, the 7x7 or 14x14 background position table."""
    ours, ref = _pair(name, seed=7)
    image = smooth_image(480, 640, seed=6)
    ref.set_image(image)
    feats = _embed(ours, image)
    assert feats["image_embed"].shape == (1, 256, 64, 64)
    assert max_rel(feats["image_embed"], ref._features["image_embed"]) <= 1e-4
    for a, b in zip(feats["high_res_feats"], ref._features["high_res_feats"], strict=True):
        assert max_rel(a, b) <= 1e-4
    for prompt, multimask in ((PROMPTS[3], True), (PROMPTS[0], False)):
        ref_masks, ref_iou, ref_low = ref.predict(**prompt, multimask_output=multimask,
                                                  return_logits=True)
        with torch.inference_mode():
            masks, iou, low = _ours_predict(ours, feats, (480, 640), prompt, multimask)
        assert low.shape[-2:] == (256, 256)
        assert max_rel(masks[0], torch.from_numpy(ref_masks)) < 5e-3
        clamped = low.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)[0]
        assert max_rel(clamped, torch.from_numpy(ref_low)) < 5e-3
        np.testing.assert_allclose(iou[0].numpy(), ref_iou, rtol=5e-3, atol=1e-5)


def test_predictor_keeps_the_high_res_features_of_its_embeddings():
    """models.Predictor (what `samdata smoke` runs) with SAM 2: embed a batch, predict on any
    of its embeddings, the official predictor's masks; a foreign embedding is refused."""
    from models import Predictor

    ours, ref = _pair("sam2_tiny_test", seed=9)
    images = [smooth_image(90, 160, 1), smooth_image(120, 70, 2)]
    predictor = Predictor(ours)
    emb = predictor.embed(images)
    prompt = PROMPTS[3]
    for i, image in enumerate(images):
        ref.set_image(image)
        ref_masks, ref_iou, _ = ref.predict(**prompt, return_logits=True)
        out = predictor.predict(emb[i], image.shape[:2], point_coords=prompt["point_coords"],
                                point_labels=prompt["point_labels"], boxes=prompt["box"])
        assert max_rel(out["masks"][0], torch.from_numpy(ref_masks)) < 5e-3
        np.testing.assert_allclose(out["iou_predictions"][0].numpy(), ref_iou, rtol=5e-3,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="expected an embedding of this predictor's last"):
        predictor.predict(emb[0] + 1, (90, 160), point_coords=[[1.0, 2.0]], point_labels=[1])
