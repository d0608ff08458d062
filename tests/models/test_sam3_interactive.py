"""SAM 3's box and point prompts (`sam3_interactive`, models/sam3/interactive.py) against the
official code (PyPI `sam3==0.1.4`) and the official checkpoint layout.

Parity: on the same seeded random weights, the official path `Sam3Processor.set_image` ->
`Sam3Image.predict_inst` (its `SAM3InteractiveImagePredictor`) against ours through the
protocol methods, as tests/models/test_sam2_parity.py: image embedding and high-res features
to 1e-4 relative; low-res logits, full-size logits and IoU to 5e-3 (the SAM 1 tolerances), for
point, box and point+box prompts, multimask and single mask; the official hole filling of the
masks on crafted logits. Layout: our keys map onto tests/data/sam3.manifest.json exactly, with
equal shapes, dtypes and parameter/buffer kinds, and they with the declared unused prefixes
cover the file exactly; files in the official layout load strictly through `build_model`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import (
    MODEL_REGISTRY,
    CheckpointError,
    HighResPromptableModel,
    PromptableModel,
    build_model,
    model_kind,
)
from models.checkpoint import load_state_dict_strict
from models.sam2 import LOW_RES_CLAMP
from models.sam3.interactive import FILE_PREFIXES, UNUSED_PREFIXES, Sam3Interactive, to_file_key
from pipelines.preflight import PreflightError, check_checkpoint
from tests.models.common import manifest, max_rel, meta_model
from tests.sam3_vocab import write_vocab
from tests.support import smooth_image

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated",
                                        "ignore:CUDA is not available")

PROMPTS = [
    dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[30.0, 40.0], [5.0, 7.5]]), point_labels=np.array([1, 0])),
    dict(box=np.array([10.0, 12.0, 70.0, 50.0])),
    dict(point_coords=np.array([[33.0, 22.0]]), point_labels=np.array([1]),
         box=np.array([10.0, 12.0, 70.0, 50.0])),
]



# -- layout -----------------------------------------------------------------------------------

def test_registry_entries_and_protocol():
    assert model_kind("sam3_interactive") is PromptableModel
    assert model_kind("sam3_interactive_tiny_test") is PromptableModel
    assert MODEL_REGISTRY["sam3_interactive"].official_file == "sam3.pt"
    model = meta_model(MODEL_REGISTRY, "sam3_interactive")
    assert isinstance(model, HighResPromptableModel)
    assert model.image_size == 1008 and model.embedding_shape == (256, 72, 72)
    assert model.high_res_shapes == [(32, 288, 288), (64, 144, 144)]
    assert model.sam_prompt_encoder.mask_input_size == (288, 288)
    with pytest.raises(ValueError, match="expected high_res_features"):
        build_model("sam3_interactive_tiny_test", seed=0).decode(
            torch.zeros(1, 32, 12, 12), point_coords=torch.zeros(1, 1, 2),
            point_labels=torch.ones(1, 1))


def test_keys_map_onto_the_official_file_and_cover_it_with_the_unused_parts():
    m = manifest("sam3")
    official = {k: (shape, dtype, is_param) for k, shape, dtype, is_param in m["keys"]}
    model = meta_model(MODEL_REGISTRY, "sam3_interactive")
    params = {k for k, _ in model.named_parameters()}
    ours = {to_file_key(k): (list(v.shape), str(v.dtype).removeprefix("torch."), k in params)
            for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    unused = {k for k in official if k.startswith(UNUSED_PREFIXES)}
    assert not unused & set(ours)
    assert unused | set(ours) == set(official)  # nothing of the file left undeclared
    for prefix in UNUSED_PREFIXES:  # each declared part exists in the file
        assert any(k.startswith(prefix) for k in official), prefix
    for prefix, _ in FILE_PREFIXES:
        assert any(k.startswith(prefix) for k in ours), prefix
    assert len(ours) == 587 and len(unused) == 1465 - 587
    assert sum(p.numel() for p in model.parameters()) == 457_408_913


def test_the_official_files_layout_loads_strictly_on_the_meta_device():
    """build_model's path (strip_checkpoint, then the strict load skipping the declared unused
    parts) on tensors of the manifest's shapes."""
    state = {k: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
             for k, shape, dtype, _ in manifest("sam3")["keys"]}
    model = meta_model(MODEL_REGISTRY, "sam3_interactive")
    load_state_dict_strict(model, Sam3Interactive.strip_checkpoint(state), UNUSED_PREFIXES)
    state["tracker.extra_head.weight"] = torch.empty(1, device="meta")
    del state["tracker.sam_mask_decoder.conv_s0.bias"]
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(model, Sam3Interactive.strip_checkpoint(state), UNUSED_PREFIXES)
    assert "sam_mask_decoder.conv_s0.bias" in str(e.value)
    assert "tracker.extra_head.weight" in str(e.value)


def _official_file(ours: torch.nn.Module) -> dict:
    """{"model": sd} as sam3.pt: our tensors under their file keys, and a tensor for each key of
    the declared unused parts (the tiny concept model's detector, the tracker's memory)."""
    sd = {to_file_key(k): v for k, v in ours.state_dict().items()}
    detector = build_model("sam3_tiny_test", seed=0).state_dict()
    sd.update({f"detector.{k}": v for k, v in detector.items()
               if f"detector.{k}".startswith(UNUSED_PREFIXES)})
    sd.update({k: torch.zeros(1) for k, *_ in manifest("sam3")["keys"]
               if k.startswith("tracker.") and k.startswith(UNUSED_PREFIXES)})
    return {"model": sd}


def test_a_file_in_the_official_layout_loads_through_build_model(tmp_path):
    source = build_model("sam3_interactive_tiny_test", seed=3)
    path = tmp_path / "sam3.pt"
    torch.save(_official_file(source), path)
    loaded = build_model("sam3_interactive_tiny_test", checkpoint=path)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert check_checkpoint("sam3_interactive_tiny_test", str(path), None) == \
        loaded.checkpoint_sha256
    bad = _official_file(source)
    del bad["model"]["tracker.no_mem_embed"]
    bad["model"]["detector.backbone.vision_backbone.sam2_convs.7.conv_1x1.weight"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as e:
        build_model("sam3_interactive_tiny_test", checkpoint=path)
    assert "no_mem_embed" in str(e.value) and "sam2_convs.7.conv_1x1.weight" in str(e.value)
    with pytest.raises(PreflightError, match="does not fit sam3_interactive_tiny_test"):
        check_checkpoint("sam3_interactive_tiny_test", str(path), None)


# -- parity -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours with seeded weights, the official tiny image model with its interactive predictor
    holding them, its Sam3Processor)."""
    vocab = tmp_path_factory.mktemp("sam3i") / "bpe_test.txt.gz"
    write_vocab(vocab)
    try:
        from tests.golden.make_sam3_official import (
            load_interactive_weights,
            official_processor,
            official_sam3,
        )

        theirs = official_sam3(str(vocab), tiny=True, interactive=True)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")
    ours = build_model("sam3_interactive_tiny_test", seed=1)
    left = load_interactive_weights(theirs, ours.state_dict())
    # what stays as the official init: parts the interactive path never runs
    unused = tuple(p.removeprefix("detector.") for p in UNUSED_PREFIXES
                   if p.startswith("detector."))
    tracker = tuple("inst_interactive_predictor.model." + p.removeprefix("tracker.")
                    for p in UNUSED_PREFIXES if p.startswith("tracker."))
    assert [k for k in left if not k.startswith(unused + tracker)] == []
    return ours, theirs, official_processor(theirs, ours.image_size)


def _official(theirs, processor, image: np.ndarray, prompt: dict, multimask: bool,
              mask_input=None):
    """The official predict_inst: (masks CxHxW logits, iou C, low-res C x h x w clamped),
    and the features its predictor decoded from."""
    from tests.golden.make_sam3_official import cpu_only

    predictor = theirs.inst_interactive_predictor
    seen = {}
    predict = predictor.predict

    def keep_features(**kwargs):
        seen.update(predictor._features)
        return predict(**kwargs)

    predictor.predict = keep_features
    try:
        with cpu_only(), torch.inference_mode():
            state = processor.set_image(Image.fromarray(image))
            out = theirs.predict_inst(state, **prompt, mask_input=mask_input,
                                      multimask_output=multimask, return_logits=True)
    finally:
        del predictor.predict
    return out, seen


def _embed(model, image):
    pixels, hw = model.prepare_image(image)
    with torch.inference_mode():
        return model.embed_images_with_features(
            torch.from_numpy(pixels)[None].permute(0, 3, 1, 2), torch.tensor([hw]))


def _ours_predict(model, feats, orig_hw, prompt, multimask, mask_input=None):
    coords = labels = boxes = None
    if "point_coords" in prompt:
        coords = model.transform_coords(torch.from_numpy(prompt["point_coords"])[None],
                                        orig_hw).float()
        labels = torch.from_numpy(prompt["point_labels"])[None].int()
    if "box" in prompt:
        boxes = model.transform_boxes(torch.from_numpy(prompt["box"])[None], orig_hw).float()
    with torch.inference_mode():
        low, iou = model.decode(feats["image_embed"], coords, labels, boxes,
                                mask_input=mask_input, multimask_output=multimask,
                                high_res_features=feats["high_res_feats"])
        return model.postprocess_masks(low, orig_hw), iou, low


def _check(ours_out, theirs_out):
    masks, iou, low = ours_out
    ref_masks, ref_iou, ref_low = theirs_out
    assert masks.shape[1:] == ref_masks.shape
    assert max_rel(masks[0], torch.from_numpy(ref_masks)) < 5e-3
    assert max_rel(low.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)[0], torch.from_numpy(ref_low)) < 5e-3
    np.testing.assert_allclose(iou[0].numpy(), ref_iou, rtol=5e-3, atol=1e-5)


@pytest.mark.parametrize("hw", [(90, 120), (200, 75), (168, 168)])
def test_tiny_features_and_masks_match_the_official_predictor(pair, hw):
    ours, theirs, processor = pair
    image = smooth_image(*hw, seed=hw[0])
    feats = _embed(ours, image)
    checked = False
    for multimask in (True, False):
        for prompt in PROMPTS:
            ref, seen = _official(theirs, processor, image, prompt, multimask)
            if not checked:
                assert feats["image_embed"].shape == seen["image_embed"].shape == (1, 32, 12, 12)
                assert max_rel(feats["image_embed"], seen["image_embed"]) <= 1e-4
                for a, b in zip(feats["high_res_feats"], seen["high_res_feats"], strict=True):
                    assert a.shape == b.shape and max_rel(a, b) <= 1e-4
                checked = True
            _check(_ours_predict(ours, feats, hw, prompt, multimask), ref)


def test_tiny_mask_input_matches_the_official_predictor(pair):
    ours, theirs, processor = pair
    image = smooth_image(100, 140, seed=3)
    prompt = PROMPTS[0]
    (_, _, low), _ = _official(theirs, processor, image, prompt, True)
    ref, _ = _official(theirs, processor, image, prompt, False, mask_input=low[:1])
    feats = _embed(ours, image)
    _check(_ours_predict(ours, feats, (100, 140), prompt, False,
                         mask_input=torch.from_numpy(low[:1])[None]), ref)


def test_hole_filling_equals_the_official_postprocessing(pair):
    """Background components of at most 256 low-res pixels (8-connected, touching the border
    or not) become logit 10 before the resize; larger ones and the foreground are kept."""
    ours, theirs, _ = pair
    logits = torch.full((2, 3, 48, 48), -4.0)
    logits[:, :, 5:40, 5:40] = 3.0  # foreground square
    logits[0, 0, 10:14, 10:14] = -1.0  # a 16-pixel hole
    logits[0, 1, 8:38, 8:38] = -2.0  # a 900-pixel hole: too large
    logits[1, 2, 20, 20] = 0.0  # logit == threshold counts as background
    logits[1, 0, 30:35, 30:35] = -0.5
    logits[1, 0, 35, 35] = -0.5  # diagonal neighbour: one component with the square above
    logits[1, 1] = torch.randn(48, 48, generator=torch.Generator().manual_seed(0))
    for hw in ((48, 48), (90, 130)):
        ref = theirs.inst_interactive_predictor._transforms.postprocess_masks(logits, hw)
        assert torch.equal(ours.postprocess_masks(logits, hw), ref)
    filled = ours.postprocess_masks(logits, (48, 48))
    assert (filled[0, 0, 10:14, 10:14] == 10.0).all() and filled[0, 1, 20, 20].item() == -2.0


def test_batched_embedding_and_decode_equal_one_by_one():
    """Two images in one encoder call, their prompts in one decoder call (each image's
    prompts contiguous), as segment and everything mode run it."""
    model = build_model("sam3_interactive_tiny_test", seed=6)
    images = [smooth_image(90, 160, 1), smooth_image(150, 120, 2)]
    pixels = torch.stack([torch.from_numpy(model.prepare_image(im)[0]) for im in images])
    coords = torch.tensor([[[10.0, 20.0]], [[100.0, 30.0]], [[50.0, 150.0]], [[5.0, 5.0]]])
    labels = torch.ones(4, 1, dtype=torch.int)
    with torch.inference_mode():
        feats = model.embed_images_with_features(pixels.permute(0, 3, 1, 2))
        low, iou = model.decode(feats["image_embed"], coords, labels,
                                high_res_features=feats["high_res_feats"])
        for p in range(4):
            i = p // 2
            one = _embed(model, images[i])
            one_low, one_iou = model.decode(one["image_embed"], coords[p : p + 1],
                                            labels[p : p + 1],
                                            high_res_features=one["high_res_feats"])
            torch.testing.assert_close(low[p : p + 1], one_low, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou[p : p + 1], one_iou, rtol=1e-4, atol=1e-5)


def test_segment_prompter_equals_the_official_predictor(pair):
    """The segment job's operator (operators/prompted/sam.py) on sam3_interactive: the kept
    mask (highest predicted IoU of 3) of each prompt equals the official predict_inst's."""
    from operators.prompted.prompts import PromptSet, make_prompt
    from operators.prompted.sam import SamPrompter

    ours, theirs, processor = pair
    images = [smooth_image(90, 160, 1), smooth_image(120, 70, 2)]
    per_image = [[make_prompt([10, 12, 70, 50]), make_prompt(None, [[30, 40]]),
                  make_prompt([5, 5, 150, 80], [[33, 22]])],
                 [make_prompt(None, [[20, 20], [40, 40]], [1, 0])]]
    prompts = PromptSet.from_prompts(per_image)
    got = {}
    for chunk in SamPrompter(ours, batch_size=2).iter_masks(images, prompts):
        for k, mask, iou in zip(chunk.index.tolist(), chunk.masks, chunk.iou, strict=True):
            got[k] = (mask.numpy(), float(iou))
    k = 0
    for i, plist in enumerate(per_image):
        for p in plist:
            kw = {"box": np.array(p["box"], float)} if p["box"] is not None else {}
            if p["points"]:
                kw.update(point_coords=np.array(p["points"], float),
                          point_labels=np.array(p["labels"]))
            (masks, iou, _), _ = _official(theirs, processor, images[i], kw, True)
            best = int(np.argmax(iou))
            near = np.abs(masks[best]) < 1e-3  # pixels on the threshold may go either way
            assert ((got[k][0] == (masks[best] > 0)) | near).all(), k
            assert got[k][1] == pytest.approx(float(iou[best]), abs=1e-5)
            k += 1
    assert k == len(got) == 4


@pytest.mark.slow
def test_full_size_matches_the_official_image_model(tmp_path):
    """build_sam3_image_model(enable_inst_interactivity=True) at 1008 px against
    sam3_interactive on the same seeded weights: one image, one point+box prompt."""
    vocab = tmp_path / "bpe_test.txt.gz"
    write_vocab(vocab)
    try:
        from tests.golden.make_sam3_official import (
            load_interactive_weights,
            official_processor,
            official_sam3,
        )

        theirs = official_sam3(str(vocab), interactive=True)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")
    ours = build_model("sam3_interactive", seed=7)
    load_interactive_weights(theirs, ours.state_dict())
    processor = official_processor(theirs, 1008)
    image = smooth_image(480, 640, seed=6)
    prompt = dict(point_coords=np.array([[300.0, 200.0]]), point_labels=np.array([1]),
                  box=np.array([100.0, 80.0, 500.0, 400.0]))
    ref, seen = _official(theirs, processor, image, prompt, True)
    del theirs
    feats = _embed(ours, image)
    assert feats["image_embed"].shape == (1, 256, 72, 72)
    assert max_rel(feats["image_embed"], seen["image_embed"]) <= 1e-4
    for a, b in zip(feats["high_res_feats"], seen["high_res_feats"], strict=True):
        assert a.shape == b.shape and max_rel(a, b) <= 1e-4
    out = _ours_predict(ours, feats, (480, 640), prompt, True)
    assert out[2].shape[-2:] == (288, 288)
    _check(out, ref)


def test_segment_and_evaluate_take_it_and_point_the_concept_model_to_it():
    from pipelines.config import ConfigError, EvaluateConfig, SegmentConfig, parse_config

    job = {"input": {"urls": ["s3://b/shards"]}, "output": {"path": "/tmp/out"}}
    cfg = parse_config({**job, "model": {"name": "sam3_interactive"}}, SegmentConfig)
    assert cfg.model.name == "sam3_interactive"
    models = [{"name": "sam_tiny"}, {"name": "sam3_interactive_tiny_test"}]
    for protocol in ("box", "points"):
        parse_config({"protocol": protocol, "input": {"urls": ["x"]},
                      "output": {"path": "/tmp/r"}, "models": models}, EvaluateConfig)
    parse_config({"protocol": "agreement", "input": {"urls": ["x"]},
                  "output": {"path": "/tmp/r"}, "models": models[:1],
                  "reference": {"name": "sam3_interactive"}}, EvaluateConfig)
    with pytest.raises(ConfigError, match="sam3_interactive for box and point prompts"):
        parse_config({**job, "model": {"name": "sam3"}}, SegmentConfig)
