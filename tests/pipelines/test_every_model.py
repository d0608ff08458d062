"""Every registry model through both pipelines' operators (the code the Ray actors run), and a
student through Ray end to end: the pipelines never special-case a model."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
from pycocotools import mask as mask_utils

from models import MODEL_REGISTRY, ConceptModel, OnePassModel, model_kind
from operators.config import (
    EmbedOutputConfig,
    GeneratorConfig,
    InputConfig,
    ModelConfig,
)
from operators.embed.embedder import Embedder
from operators.everything.labeler import AutoLabeler
from operators.shards.prepare import read_and_prepare
from operators.shards.sample import write_sample_corpus
from operators.shards.write import masks_table
from pipelines.autolabel import run_autolabel
from pipelines.config import AutolabelConfig, ConfigError, EmbedConfig, parse_config
from pipelines.embed import run_embed
from tests.support import as_batch

# The teachers at full size take minutes on a CPU; they share all code with sam_tiny. The XL
# EfficientViT-SAMs (20-35 s each on 2 cores) share all code with the L models: slow checks.
SLOW_MODELS = ("efficientvit_sam_xl0", "efficientvit_sam_xl1")
# The SAM 2.1 sizes share all code with sam2_tiny_test (built and loaded at full size in
# tests/models/test_sam2_manifest.py).
# SAM 3, its student and its interactive model at full size share all code with
# sam3_tiny_test, mobile_sam3_tiny_test and sam3_interactive_tiny_test.
FULL_SIZE = ("sam_vit_h", "sam_vit_l", "sam_vit_b", "sam2_1_hiera_t", "sam2_1_hiera_s",
             "sam2_1_hiera_b_plus", "sam2_1_hiera_l", "sam3", "mobile_sam3",
             "sam3_interactive")
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n
          for n in MODEL_REGISTRY if n not in FULL_SIZE]
LOOSE = {"points_per_side": 2, "pred_iou_thresh": -1, "stability_score_thresh": 0.0,
         "box_nms_thresh": 1.0,
         # one-pass models (FastSAM): every detection of the random detector, at a small size
         "detection_conf": 0.0, "detection_imgsz": 128}
INPUT = InputConfig(urls=["-"])


def _one_pass(name: str) -> bool:
    return model_kind(name) is OnePassModel


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = write_sample_corpus(str(tmp_path_factory.mktemp("corpus")), shards=1,
                               images_per_shard=1, seed=3, min_side=64, max_side=96)[0]
    return {"shard": "sa_000000", "url": path, "container": "tar"}


@pytest.mark.parametrize("name", MODELS)
def test_model_through_embed_and_autolabel_operators(name, shard):
    if _one_pass(name):
        # No image embedding: the embed job refuses it before any work, naming the field
        with pytest.raises(ConfigError, match="model: name: expected a model with an image"):
            parse_config({"input": {"urls": ["x"]}, "output": {"path": "y"},
                          "model": {"name": name}}, EmbedConfig)
    else:
        # Embedding: prepared inputs -> the model's embedding, finite
        rows = [r for r in read_and_prepare(shard, name, INPUT) if not r["is_end"]]
        out = Embedder(ModelConfig(name=name, seed=0),
                       EmbedOutputConfig(path="-", dtype="float32"))(as_batch(rows))
        emb = out["embedding"]
        assert emb.shape[1:] == MODEL_REGISTRY[name]().embedding_shape
        assert np.isfinite(emb).all() and emb.std() > 0
    if model_kind(name) is ConceptModel:  # labels concepts (test_autolabel_concepts.py)
        return
    # Everything mode: original images -> SA-1B annotations whose masks have the image size
    rows = list(read_and_prepare(shard, name, INPUT, mode="original"))
    labels = AutoLabeler(ModelConfig(name=name, seed=0, batch_size=4),
                         GeneratorConfig(**LOOSE))(as_batch(rows))
    table = masks_table({k: v[:1] for k, v in labels.items()})
    row = table.to_pylist()[0]
    assert row["status"] == "ok" and row["model"] == name and row["annotations"]
    for ann in row["annotations"]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]}
        assert mask_utils.decode(rle).shape == (row["height"], row["width"])


def test_a_student_through_ray_end_to_end(ray_local, tmp_path):
    corpus = tmp_path / "corpus"
    write_sample_corpus(str(corpus), shards=1, images_per_shard=2, seed=5)
    name = "efficientvit_sam_l0"
    emb = run_embed(parse_config({
        "input": {"urls": [str(corpus)]}, "output": {"path": str(tmp_path / "emb")},
        "model": {"name": name}}, EmbedConfig))
    assert emb.images_ok == 2
    table = pads.dataset(str(tmp_path / "emb"), format="parquet").to_table()
    assert table.column("model").to_pylist() == [name, name]
    labels = run_autolabel(parse_config({
        "input": {"urls": [str(corpus)]}, "output": {"path": str(tmp_path / "al")},
        "model": {"name": name}, "generator": LOOSE}, AutolabelConfig))
    assert labels.images_ok == 2
