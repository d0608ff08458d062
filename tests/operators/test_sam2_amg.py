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


def _generators(seed: int = 11):
    """sam2_tiny_test ours and official (same weights), the hypernetwork outputs scaled so that
    random weights give logits with structure (the thresholds then mean something)."""
    from tests.golden.make_sam2_official import official_predictor

    ours = build_model("sam2_tiny_test", seed=seed)
    sd = ours.state_dict()
    for k in sd:
        if k.startswith("sam_mask_decoder.output_hypernetworks_mlps") and k.endswith(
                "layers.2.weight"):
            sd[k] = sd[k] * 40
    ours.load_state_dict(sd)
    try:
        ref = official_predictor(ours)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam2 not installed: {e}")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    def official_generator(settings):
        gen = SAM2AutomaticMaskGenerator(ref.model, output_mode="coco_rle",
                                         **settings.settings(one_pass=False))
        gen.predictor._bb_feat_sizes = ref._bb_feat_sizes  # the test config's feature sizes
        return gen

    return ours, official_generator


def _decode(ann) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({**ann["segmentation"]}).astype(bool)


def test_official_sam2_generator_defaults_are_ours_but_pred_iou_thresh():
    """Every default of SAM2AutomaticMaskGenerator's grid parameters equals GeneratorConfig's,
    except pred_iou_thresh (0.8 against SAM 1's 0.88, which GeneratorConfig keeps)."""
    import inspect

    from tests.golden.make_sam2_official import official_sam2_package

    try:
        official_sam2_package()
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam2 not installed: {e}")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from operators.config import GeneratorConfig

    defaults = {k: v.default for k, v in inspect.signature(
        SAM2AutomaticMaskGenerator.__init__).parameters.items()}
    ours = GeneratorConfig()
    for name in (*GeneratorConfig.GRID_FIELDS, "use_m2m"):
        expected = 0.8 if name == "pred_iou_thresh" else getattr(ours, name)
        assert defaults[name] == expected, name
    assert ours.pred_iou_thresh == 0.88
    assert defaults["mask_threshold"] == 0.0 and defaults["multimask_output"] is True


@pytest.mark.parametrize("use_m2m", [False, True])
def test_generator_masks_equal_the_official_sam2_generator(use_m2m):
    """Everything mode with SAM 2.1, one crop layer, use_m2m off and on: the official
    generator's masks, in its order, with its scores."""
    from operators.config import GeneratorConfig
    from operators.everything.grid import MaskGenerator

    ours, official_generator = _generators()
    # box NMS off: random weights give near-identical masks that NMS would collapse to one
    settings = GeneratorConfig(points_per_side=8, points_per_batch=16, pred_iou_thresh=0.4,
                               stability_score_thresh=0.6, crop_n_layers=1, box_nms_thresh=1.0,
                               crop_nms_thresh=1.0, use_m2m=use_m2m)
    images = [smooth_image(120, 170, seed=3), smooth_image(90, 64, seed=4)]
    got = MaskGenerator(ours, settings, batch_size=3).generate(images)
    total = matched = 0
    for image, ours_anns in zip(images, got, strict=True):
        ref = official_generator(settings).generate(image)
        assert len(ours_anns) == len(ref) > 0
        for a, b in zip(ref, ours_anns, strict=True):
            ma, mb = _decode(a), _decode(b)
            total += 1
            matched += (ma & mb).sum() / max((ma | mb).sum(), 1) >= 0.9
            # the official transforms the grid in float32, we in float64
            np.testing.assert_allclose(a["point_coords"], b["point_coords"], rtol=1e-6)
            assert a["crop_box"] == b["crop_box"]
            assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4
            assert abs(a["stability_score"] - b["stability_score"]) < 1e-2
    assert total >= 30
    assert matched / total >= 0.99, (matched, total)
