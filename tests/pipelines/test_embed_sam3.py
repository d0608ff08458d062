"""`samdata embed` with SAM 3 (sam3_tiny_test) on a real Ray: the embedding column is the
vision trunk's map (what a SAM 3 student's trunk is distilled to), a fixed_shape_tensor read
back with plain pyarrow, equal to the model's `embed_trunk`; no vocabulary is needed."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import torch

from models import build_model, image_embedding
from operators.config import InputConfig
from operators.shards.listing import list_shards
from operators.shards.prepare import model_skeleton, read_and_prepare
from operators.shards.sample import write_sample_corpus
from pipelines.config import EmbedConfig, parse_config
from pipelines.embed import run_embed


def test_sam3_embeddings_are_its_trunk_map_as_a_fixed_shape_tensor(ray_local, tmp_path):
    corpus, out = str(tmp_path / "corpus"), str(tmp_path / "emb")
    write_sample_corpus(corpus, shards=1, images_per_shard=3, seed=5)
    # no model.vocabulary and no checkpoint beside which one could be: embed encodes no text
    cfg = parse_config({"input": {"urls": [corpus]}, "output": {"path": out},
                        "model": {"name": "sam3_tiny_test", "precision": "fp32"},
                        "compute": {"ray_batch_size": 4}}, EmbedConfig)
    summary = run_embed(cfg)
    assert (summary.images_ok, summary.images_failed) == (3, 0)

    table = pads.dataset(out, format="parquet").to_table()
    kind = table.schema.field("embedding").type
    assert tuple(kind.shape) == (64, 12, 12) and str(kind.value_type) == "halffloat"
    assert set(table.column("model").to_pylist()) == {"sam3_tiny_test"}
    assert table.column("input_hw").to_pylist() == [[168, 168]] * 3  # stretched
    emb = table.column("embedding").combine_chunks().to_numpy_ndarray()
    assert emb.shape == (3, 64, 12, 12) and emb.dtype == np.float16

    # The same map through the model, from the rows' own prepared images
    shard = list_shards([corpus])[0]
    item = {"shard": shard.name, "url": shard.url, "container": shard.container}
    rows = {r["key"]: r for r in read_and_prepare(item, "sam3_tiny_test",
                                                  InputConfig(urls=[corpus]))
            if not r["is_end"]}
    keys = table.column("key").to_pylist()
    pixels = torch.from_numpy(np.stack([rows[k]["pixels"] for k in keys])).permute(0, 3, 1, 2)
    model = build_model("sam3_tiny_test", seed=0)
    with torch.no_grad():
        want = model.embed_trunk(pixels)
        assert torch.equal(want, image_embedding(model, pixels, torch.full((3, 2), 168)))
        # it is the map the neck makes every level from
        fpn = model.embed_images(pixels)["backbone_fpn"]
        neck = model.backbone.vision_backbone
        assert torch.allclose(neck.convs[2](want), fpn[2], atol=1e-5)
    np.testing.assert_allclose(emb.astype(np.float32), want.half().float().numpy(), rtol=0,
                               atol=2e-3)
    # at full size: 1024x72x72, 10,616,832 bytes an image in fp16 (5.06x SAM's 256x64x64)
    c, h, w = model_skeleton("sam3").embedding_shape
    assert (c, h, w) == (1024, 72, 72) and c * h * w * 2 == 10_616_832
