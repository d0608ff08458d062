"""The fast paths agree with the fp32 reference: bf16 autocast embeddings (cosine >= 0.999),
bf16 auto-labels (>= 99% of masks matched at IoU >= 0.9), compiled and channels-last encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from operators.config import GeneratorConfig, InputConfig
from operators.everything.grid import MaskGenerator
from operators.runtime.device import autocast
from operators.shards.prepare import read_and_prepare
from operators.shards.sample import write_sample_corpus
from tests.support import as_batch, embedder, smooth_image


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    path = write_sample_corpus(str(tmp_path_factory.mktemp("c")), shards=1, images_per_shard=3,
                               seed=8)[0]
    rows = read_and_prepare({"shard": "sa_000000", "url": path, "container": "tar"}, "sam_tiny",
                            InputConfig(urls=[path]))
    return as_batch([r for r in rows if not r["is_end"]])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bf16_embeddings_agree_with_fp32(batch):
    ref = embedder(precision="fp32", dtype="float32")(batch)
    fast = embedder(precision="bf16", dtype="float32")(batch)
    cos = _cosines(ref["embedding"], fast["embedding"])
    assert (cos >= 0.999).all(), cos
    assert not np.array_equal(ref["embedding"], fast["embedding"])  # bf16 did run


def test_channels_last_and_compiled_encoder_agree_with_plain(batch):
    ref = embedder(precision="fp32", dtype="float32")(batch)
    nhwc = embedder(precision="fp32", dtype="float32", channels_last=True)(batch)
    np.testing.assert_allclose(nhwc["embedding"], ref["embedding"], rtol=1e-4, atol=1e-5)
    compiled = embedder(precision="fp32", dtype="float32", compile=True,
                        batch_size=2)  # 3 rows: 2 + 1 padded
    assert compiled.compile and compiled.pad_to == 2
    assert type(compiled.model.image_encoder).__name__ == "OptimizedModule"
    out = compiled(batch)
    assert (_cosines(out["embedding"], ref["embedding"]) >= 0.99999).all()


def test_bf16_auto_labels_match_fp32_masks():
    from models import build_model

    model = build_model("sam_tiny", seed=11)
    sd = model.state_dict()
    for k in sd:  # structured masks from random weights, as in the parity tests
        if k.startswith("mask_decoder.output_hypernetworks_mlps") and k.endswith("2.weight"):
            sd[k] = sd[k] * 40
    model.load_state_dict(sd)
    settings = GeneratorConfig(points_per_side=8, pred_iou_thresh=-1,
                               stability_score_thresh=0.6, box_nms_thresh=1.0)
    images = [smooth_image(120, 170, seed=3), smooth_image(96, 128, seed=4)]
    ref = MaskGenerator(model, settings).generate(images)
    with autocast(torch.device("cpu"), "bf16"):
        fast = MaskGenerator(model, settings).generate(images)
    matched = total = 0
    for r_anns, f_anns in zip(ref, fast, strict=True):
        f_rles = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}
                  for a in f_anns]
        for a in r_anns:
            total += 1
            r = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}]
            matched += bool(f_rles) and mask_utils.iou(r, f_rles, [0] * len(f_rles)).max() >= 0.9
    assert total > 20 and matched / total >= 0.99
