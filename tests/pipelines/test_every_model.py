"""Every registry model through both pipelines' operators (the code the Ray actors run), and a
student through Ray end to end: the pipelines never special-case a model."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from pycocotools import mask as mask_utils

from models import MODEL_REGISTRY
from operators.autolabel import AutoLabeler
from operators.embed import Embedder
from operators.prepare import read_and_prepare
from operators.sample import write_sample_corpus
from operators.write import masks_table
from pipelines.autolabel import run_autolabel
from pipelines.config import AutolabelConfig, ConfigError, EmbedConfig, parse_config
from pipelines.embed import run_embed

# The teachers at full size take minutes on a CPU; they share all code with sam_tiny.
MODELS = [n for n in MODEL_REGISTRY if n not in ("sam_vit_h", "sam_vit_l", "sam_vit_b")]
LOOSE = {"points_per_side": 2, "pred_iou_thresh": -1, "stability_score_thresh": 0.0,
         "box_nms_thresh": 1.0,
         # one-pass models (FastSAM): every detection of the random detector, at a small size
         "detection_conf": 0.0, "detection_imgsz": 128}


def _one_pass(name: str) -> bool:
    with torch.device("meta"):
        return hasattr(MODEL_REGISTRY[name](), "segment_everything")


def _batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as Ray Data hands them to map_batches: one numpy array per column."""
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        if isinstance(values[0], np.ndarray) and len({v.shape for v in values}) == 1:
            out[k] = np.stack(values)
        elif isinstance(values[0], np.ndarray):  # ragged (original images): objects
            out[k] = np.empty(len(values), dtype=object)
            out[k][:] = values
        elif isinstance(values[0], (str, bytes)):
            out[k] = np.array(values, dtype=object)
        else:
            out[k] = np.array(values)
    return out


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    path = write_sample_corpus(str(tmp_path_factory.mktemp("corpus")), shards=1,
                               images_per_shard=1, seed=3, min_side=64, max_side=96)[0]
    return {"shard": "sa_000000", "url": path, "kind": "tar"}


@pytest.mark.parametrize("name", MODELS)
def test_model_through_embed_and_autolabel_operators(name, shard):
    if _one_pass(name):
        # No image embedding: the embed job refuses it before any work, naming the field
        with pytest.raises(ConfigError, match="model: name: expected a model with an image"):
            parse_config({"input": {"urls": ["x"]}, "output": {"path": "y"},
                          "model": {"name": name}}, EmbedConfig)
    else:
        # Embedding: prepared inputs -> the model's embedding, finite
        rows = [r for r in read_and_prepare(shard, name) if r["kind"] == "image"]
        out = Embedder(name, seed=0, out_dtype="float32")(_batch(rows))
        emb = out["embedding"]
        assert emb.shape[1:] == MODEL_REGISTRY[name]().embedding_shape
        assert np.isfinite(emb).all() and emb.std() > 0
    # Everything mode: original images -> SA-1B annotations whose masks have the image size
    rows = list(read_and_prepare(shard, name, mode="original"))
    labels = AutoLabeler(name, LOOSE, seed=0)(_batch(rows))
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
