"""The output folders open in every common reader as written, with no extra arguments: the
label and embedding folders of a real `autolabel` and `embed` run hold nothing but Parquet
(the bookkeeping is beside them, in `{output}.samdata/`), even while a lease is held."""

from __future__ import annotations

import numpy as np
import pytest

from operators.shards.sample import write_sample_corpus
from pipelines.autolabel import run_autolabel
from pipelines.config import AutolabelConfig, EmbedConfig, parse_config
from pipelines.embed import run_embed

SHARDS, IMAGES = 2, 3


@pytest.fixture()
def no_torchvision_stand_in(monkeypatch):
    """The parity tests put a stand-in `torchvision` module (no __spec__) into sys.modules;
    `datasets` probes for torchvision with importlib and trips over it. Hide it here."""
    import sys

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        if getattr(sys.modules[name], "__spec__", None) is None:
            monkeypatch.delitem(sys.modules, name)


@pytest.fixture(scope="module")
def outputs(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    write_sample_corpus(str(root / "corpus"), shards=SHARDS, images_per_shard=IMAGES)
    common = {"input": {"urls": [str(root / "corpus")]}, "model": {"name": "sam_tiny"}}
    run_embed(parse_config({**common, "output": {"path": str(root / "emb")}}, EmbedConfig))
    run_autolabel(parse_config({**common, "output": {"path": str(root / "labels")},
                                "generator": {"points_per_side": 4, "pred_iou_thresh": 0,
                                              "stability_score_thresh": 0}}, AutolabelConfig))
    assert (root / "emb.samdata" / "identity.json").exists()
    return {"labels": str(root / "labels"), "emb": str(root / "emb")}


@pytest.mark.parametrize("which", ["labels", "emb"])
def test_pyarrow_polars_duckdb_pandas(outputs, which):
    import duckdb
    import pandas
    import polars
    import pyarrow.dataset as pads

    root = outputs[which]
    n = SHARDS * IMAGES
    assert pads.dataset(root, format="parquet").count_rows() == n
    frame = polars.scan_parquet(root).collect()
    assert frame.height == n and set(frame["status"]) == {"ok"}
    got = duckdb.sql("select count(*), count(distinct key) from "
                     f"read_parquet('{root}/**/*.parquet')")
    assert got.fetchall() == [(n, n)]
    assert len(pandas.read_parquet(root)) == n


def test_ray_data_reads_both(outputs):
    import ray

    assert ray.data.read_parquet(outputs["labels"]).count() == SHARDS * IMAGES
    ds = ray.data.read_parquet(outputs["emb"], columns=["embedding"])
    batch = next(iter(ds.iter_torch_batches(batch_size=4)))
    assert tuple(batch["embedding"].shape) == (4, 32, 8, 8)


def test_hugging_face_datasets_reads_the_labels(outputs, no_torchvision_stand_in):
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=outputs["labels"])["train"]
    assert len(ds) == SHARDS * IMAGES
    rows = [r for r in ds if r["annotations"]]
    assert rows and all(r["status"] == "ok" for r in ds)
    first = rows[0]
    assert np.asarray(first["annotations"][0]["segmentation"]["size"]).tolist() == [
        first["height"], first["width"]]


def test_the_hf_export_of_embeddings_loads_as_arrays(outputs, tmp_path, capsys,
                                                     no_torchvision_stand_in):
    import datasets
    import pyarrow.dataset as pads

    from pipelines.cli import main

    out = tmp_path / "hf"
    assert main(["export", outputs["emb"], "--format", "hf", "--out", str(out)]) == 0
    assert f"exported {SHARDS * IMAGES} images" in capsys.readouterr().out
    ds = datasets.load_dataset("parquet", data_dir=str(out))["train"].with_format("numpy")
    table = pads.dataset(outputs["emb"], format="parquet").to_table()
    ours = dict(zip(table.column("key").to_pylist(),
                    table.column("embedding").combine_chunks().to_numpy_ndarray(), strict=True))
    assert len(ds) == len(ours)
    for row in ds:
        assert row["embedding"].shape == (32, 8, 8)
        np.testing.assert_array_equal(row["embedding"], ours[row["key"]])
    assert main(["export", outputs["labels"], "--format", "hf", "--out", str(tmp_path / "x")]) \
        == 2  # a label dataset has no embedding column
