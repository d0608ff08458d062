"""`output.high_res`: a SAM 2 model's high-res feature maps beside the embedding, end to end
on a real Ray (sam2_tiny_test), read back with plain pyarrow; refused for other models."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from models import build_model
from operators.shards.identity import OutputMismatch
from operators.shards.prepare import model_skeleton
from operators.shards.sample import write_sample_corpus
from operators.shards.schema import HIGH_RES_COLUMNS
from pipelines.config import ConfigError, parse_config
from pipelines.embed import run_embed


def _cfg(inp, out, model="sam2_tiny_test", high_res=True):
    return parse_config({"input": {"urls": [inp]},
                         "output": {"path": out, "high_res": high_res},
                         "model": {"name": model, "precision": "fp32"},
                         "compute": {"ray_batch_size": 4}})


def test_high_res_maps_are_columns_equal_to_the_model_and_part_of_the_identity(
        ray_local, tmp_path):
    corpus, out = str(tmp_path / "corpus"), str(tmp_path / "emb")
    write_sample_corpus(corpus, shards=1, images_per_shard=3, seed=2)
    summary = run_embed(_cfg(corpus, out))
    assert (summary.images_ok, summary.images_failed) == (3, 0)

    table = pads.dataset(out, format="parquet").to_table()
    model = build_model("sam2_tiny_test", seed=0)
    for name, shape in zip(HIGH_RES_COLUMNS, model.high_res_shapes, strict=True):
        kind = table.schema.field(name).type
        assert tuple(kind.shape) == tuple(shape) and str(kind.value_type) == "halffloat"
    emb = table.column("embedding").combine_chunks().to_numpy_ndarray()
    maps = [table.column(c).combine_chunks().to_numpy_ndarray() for c in HIGH_RES_COLUMNS]
    assert emb.shape == (3, 64, 16, 16) and maps[0].shape == (3, 8, 64, 64)
    assert maps[1].shape == (3, 16, 32, 32) and maps[0].dtype == np.float16

    # The same features through the model directly, from the rows' own decoded images
    from operators.config import InputConfig
    from operators.shards.listing import list_shards
    from operators.shards.prepare import read_and_prepare

    shard = list_shards([corpus])[0]
    item = {"shard": shard.name, "url": shard.url, "container": shard.container}
    rows = {r["key"]: r for r in read_and_prepare(item, "sam2_tiny_test",
                                                  InputConfig(urls=[corpus]))
            if not r["is_end"]}
    keys = table.column("key").to_pylist()
    pixels = torch.from_numpy(np.stack([rows[k]["pixels"] for k in keys])).permute(0, 3, 1, 2)
    with torch.no_grad():
        feats = model.embed_images_with_features(pixels)
    want = [feats["image_embed"], *feats["high_res_feats"]]
    for got, ref in zip([emb, *maps], want, strict=True):
        np.testing.assert_allclose(got.astype(np.float32), ref.half().float().numpy(),
                                   rtol=0, atol=2e-3)

    # Another high_res setting on the same output is another identity: refused
    with pytest.raises(OutputMismatch, match="high_res"):
        run_embed(_cfg(corpus, out, high_res=False))


def test_high_res_is_refused_at_config_time_for_a_model_without_high_res_features(tmp_path):
    with pytest.raises(ConfigError) as e:
        _cfg(str(tmp_path), str(tmp_path / "emb"), model="sam_tiny")
    msg = str(e.value)
    assert "output.high_res" in msg and "'sam_tiny'" in msg and "sam2_tiny_test" in msg
    assert msg.splitlines()[1:] == [next(ln for ln in msg.splitlines()
                                         if ln.strip().startswith("output.high_res:"))]
    # the default leaves every model as it was
    assert not _cfg(str(tmp_path), str(tmp_path / "emb"), model="sam_tiny",
                    high_res=False).output.high_res
    assert model_skeleton("sam2_tiny_test").high_res_shapes == [(8, 64, 64), (16, 32, 32)]
