"""The one-pass generator (FastSAM): annotations made a chunk of masks at a time equal those
made at once and the model's own full-size masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from models import build_model
from operators.config import GeneratorConfig
from operators.everything.coco_rle import finish_annotations
from operators.everything.one_pass import (
    OnePassGenerator,
    detect_everything,
    segment_everything,
)
from tests.golden.make_fastsam import DATA, golden_image, golden_state_dict

SETTINGS = GeneratorConfig(detection_conf=0.4, detection_iou=0.9, detection_imgsz=320)
DETECT = dict(detection_conf=0.4, detection_iou=0.9, detection_imgsz=320)


@pytest.fixture(scope="module")
def model():
    with np.load(DATA / "golden_fastsam_s.npz") as f:
        bn_mean, bn_var = f["bn_mean"], f["bn_var"]
    net = build_model("fastsam_s")
    net.load_state_dict(golden_state_dict(net, bn_mean, bn_var))
    return net.eval()


def test_chunked_masks_equal_the_whole(model):
    image = golden_image()
    det = detect_everything(model, [image], **DETECT)[0]
    assert len(det) > 10
    whole = det.mask_logits()
    chunks = torch.cat([det.mask_logits(s, s + 7) for s in range(0, len(det), 7)])
    # the prototype product is made once for all detections: chunks are exactly its rows
    assert torch.equal(chunks, whole)
    assert det.mask_logits(len(det), len(det) + 5).shape == (0, *image.shape[:2])
    full = segment_everything(model, [image], **DETECT)[0]
    assert torch.equal(full["mask_logits"], whole)


def test_generator_chunks_do_not_change_the_annotations(model):
    images = [golden_image(), golden_image(seed=1, shape=(150, 260, 3))]
    one = OnePassGenerator(model, SETTINGS.model_copy(update={"upscale_batch_size": 1})
                           ).generate(images)
    many = OnePassGenerator(model, SETTINGS.model_copy(update={"upscale_batch_size": 64})
                            ).generate(images)
    assert one == many and len(one[0]) > 10
    full = segment_everything(model, images[:1], **DETECT)[0]
    kept = [k for k in range(len(full["scores"])) if (full["mask_logits"][k] > 0).any()]
    assert len(one[0]) == len(kept)
    for ann, k in zip(one[0], kept, strict=True):
        mask = mask_utils.decode({**ann["segmentation"],
                                  "counts": ann["segmentation"]["counts"].encode()})
        assert np.array_equal(mask.astype(bool), (full["mask_logits"][k] > 0).numpy())
        assert ann["predicted_iou"] == pytest.approx(float(full["scores"][k]))
        assert ann["point_coords"] == [] and ann["crop_box"] == [0, 0, 300, 200]


def test_generator_refuses_bad_arguments(model):
    with pytest.raises(ValueError, match="upscale_batch_size"):
        GeneratorConfig(upscale_batch_size=0)
    with pytest.raises(ValueError, match="expected batch_size >= 1, got 0"):
        OnePassGenerator(model, SETTINGS, batch_size=0)
    with pytest.raises(ValueError, match="expected a one-pass model"):
        OnePassGenerator(build_model("sam_tiny"), SETTINGS)


def test_image_batches_and_pixel_budget_do_not_change_the_annotations(model, monkeypatch):
    import operators.everything.one_pass as one_pass

    # (images of one letterbox size share a forward pass: batched convolutions round
    # differently, so these three have three sizes)
    images = [golden_image(), golden_image(seed=1, shape=(150, 260, 3)),
              golden_image(seed=2, shape=(260, 200, 3))]
    whole = OnePassGenerator(model, SETTINGS, batch_size=1).generate(images)
    import operators.runtime.batch_size as batch_size

    monkeypatch.setattr(batch_size, "MASK_PIXEL_BUDGET", 300 * 200 * 3)  # 3 masks a chunk
    calls = []
    detect = one_pass.detect_everything
    monkeypatch.setattr(one_pass, "detect_everything",
                        lambda m, imgs, **kw: calls.append(len(imgs)) or detect(m, imgs, **kw))
    assert OnePassGenerator(model, SETTINGS, batch_size=2).generate(images) == whole
    assert calls == [2, 1]


def test_bf16_autocast_keeps_boxes_scores_and_masks_in_float32(model):
    """The backbone may run in bf16; box decoding, scores and masks stay float32 (bf16 would
    put every box side above 512 px on a 4 px grid)."""
    image = golden_image(shape=(300, 600, 3))  # wide enough for box sides above 512 px
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds, protos = model(torch.rand(1, 3, 320, 640))
        det = detect_everything(model, [image], detection_conf=0.2, detection_iou=0.9,
                                detection_imgsz=640)[0]
        logits = det.mask_logits(0, 4)
    assert preds.dtype == protos.dtype == logits.dtype == det.boxes.dtype == torch.float32
    x_centres = preds[0, 0][preds[0, 0] > 512]
    assert len(x_centres) > 100 and (x_centres % 4 != 0).float().mean() > 0.1  # bf16: 0


def test_extreme_aspect_ratio_gets_one_pixel_not_a_crash(model):
    from models.yolov8_seg import letterbox_geometry

    assert letterbox_geometry((1, 3000), 1024).resized_hw == (1, 1024)
    out = OnePassGenerator(model, GeneratorConfig(detection_imgsz=256)).generate(
        [np.full((1, 3000, 3), 128, np.uint8)])
    assert len(out) == 1 and all(a["segmentation"]["size"] == [1, 3000] for a in out[0])


def test_unencoded_annotations_finish_to_the_encoded_ones(model):
    """generate(encode=False) (the actor's call) + finish_annotations (the writer's) equals
    generate(), for chunks of any size."""
    images = [golden_image(), golden_image(seed=1, shape=(150, 260, 3))]
    for chunk in [3, 64]:
        generator = OnePassGenerator(model, SETTINGS.model_copy(
            update={"upscale_batch_size": chunk}))
        raw = generator.generate(images, encode=False)
        assert all(a["segmentation"]["runs"].dtype == np.int32 for anns in raw for a in anns)
        assert finish_annotations(raw) == generator.generate(images)
