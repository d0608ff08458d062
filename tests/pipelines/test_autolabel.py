"""The auto-labeling pipeline end to end: S3 shards -> SA-1B annotations in Parquet on S3."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
from pycocotools import mask as mask_utils

from operators.shards.sample import write_sample_corpus
from pipelines.autolabel import run_autolabel
from pipelines.config import AutolabelConfig, load_config, parse_config

SA1B_FIELDS = {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
               "point_coords", "crop_box"}


def test_s3_corpus_to_sa1b_annotations(ray_local, s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=2, seed=2,
                        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    # random weights: thresholds lowered so that masks survive
    cfg = parse_config({
        "input": {"urls": [f"s3://{bucket}/corpus/"]}, "output": {"path": f"s3://{bucket}/al"},
        "model": {"name": "sam_tiny"}, "storage": {"endpoint_url": s3_endpoint},
        "compute": {"ray_batch_size": 2},
        "generator": {"points_per_side": 4, "pred_iou_thresh": -1,
                      "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
    }, AutolabelConfig)
    summary = run_autolabel(cfg)
    assert (summary.images_ok, summary.images_failed, summary.shards_done) == (4, 0, 2)

    table = pads.dataset(f"{bucket}/al", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 4
    for row in table.to_pylist():
        assert row["status"] == "ok" and row["model"] == "sam_tiny"
        assert '"points_per_side": 4' in row["settings"]
        anns = row["annotations"]
        assert anns and all(set(a) == SA1B_FIELDS for a in anns)
        for a in anns:
            rle = {"size": a["segmentation"]["size"],
                   "counts": a["segmentation"]["counts"].encode()}
            m = mask_utils.decode(rle)
            assert m.shape == (row["height"], row["width"])
            assert int(m.sum()) == a["area"]
            assert a["crop_box"] == [0.0, 0.0, float(row["width"]), float(row["height"])]
            assert len(a["point_coords"]) == 1
    # rerun: nothing to do, nothing duplicated
    again = run_autolabel(cfg)
    assert (again.shards_skipped, again.shards_done) == (2, 0)
    assert pads.dataset(f"{bucket}/al", filesystem=fs, format="parquet").count_rows() == 4


def test_shipped_config_is_valid():
    cfg = load_config("configs/autolabel_sa1b.yaml", cls=AutolabelConfig)
    assert cfg.generator.points_per_side == 32 and cfg.generator.pred_iou_thresh == 0.88
    assert np.isclose(cfg.generator.crop_overlap_ratio, 512 / 1500)
    embed = load_config("configs/embed_sa1b.yaml")
    assert embed.model.name == "sam_vit_h"
