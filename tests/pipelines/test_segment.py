"""`samdata segment` end to end: S3 shards -> one mask per SA-1B box, read back with plain
pyarrow; a detector's Parquet prompts -> masks whose categories reach the COCO export."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from operators.shards.listing import Shard
from operators.shards.read import Sample, iter_shard
from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from pipelines.config import ConfigError, SegmentConfig, load_config, parse_config
from pipelines.segment import run_segment


def _ground_truth(url: str, opts: dict | None = None) -> dict[str, dict]:
    """key -> the sample's SA-1B json of a shard."""
    return {s.key: s.meta for s in iter_shard(Shard.from_url("x", url), opts)
            if isinstance(s, Sample)}


def test_s3_shards_boxes_become_one_mask_each(ray_local, s3_bucket, s3_endpoint, tmp_path):
    fs, bucket = s3_bucket
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    urls = write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=2, seed=5,
                               storage_options=opts)
    cfg = parse_config({
        "input": {"urls": [f"s3://{bucket}/corpus/"]}, "output": {"path": f"s3://{bucket}/seg"},
        "model": {"name": "sam_tiny"}, "storage": {"endpoint_url": s3_endpoint},
        "compute": {"ray_batch_size": 2}, "prompts": {"decoder_batch_size": 3},
    }, SegmentConfig)
    summary = run_segment(cfg)
    assert (summary.images_ok, summary.images_failed, summary.shards_done) == (4, 0, 2)

    # Plain pyarrow reads it; every SA-1B box got its mask
    table = pads.dataset(f"{bucket}/seg", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 4
    gt = {**_ground_truth(urls[0], opts), **_ground_truth(urls[1], opts)}
    for row in table.to_pylist():
        anns = gt[row["key"]]["annotations"]
        assert row["status"] == "ok" and len(row["annotations"]) == len(anns)
        for got, ann in zip(row["annotations"], anns, strict=True):
            x, y, w, h = ann["bbox"]
            assert got["prompt_box"] == [x, y, x + w, y + h] and got["source_id"] == ann["id"]
            rle = {"size": got["segmentation"]["size"],
                   "counts": got["segmentation"]["counts"].encode()}
            assert mask_utils.decode(rle).shape == (row["height"], row["width"])
            assert int(mask_utils.area(rle)) == got["area"]
    # Rerun: nothing to do
    again = run_segment(cfg)
    assert (again.shards_skipped, again.shards_done) == (2, 0)
    # COCO export: class-agnostic, scores are the predicted IoUs
    out = tmp_path / "coco.json"
    assert main(["export", f"s3://{bucket}/seg", "--format", "coco", "--out", str(out),
                 "--endpoint-url", s3_endpoint]) == 0
    coco = COCO(str(out))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object",
                                                 "supercategory": "object"}]
    assert len(coco.getAnnIds()) == sum(len(m["annotations"]) for m in gt.values())


def test_detector_boxes_carry_categories_to_the_coco_export(ray_local, tmp_path):
    corpus = write_sample_corpus(str(tmp_path / "corpus"), shards=1, images_per_shard=3,
                                 seed=6)
    gt = _ground_truth(corpus[0])
    # a "detector": each image's shape boxes, the first named "box" the others "blob"
    keys = sorted(gt)[:2]  # the third image has no detections
    boxes, names, scores = [], [], []
    for key in keys:
        anns = gt[key]["annotations"]
        boxes.append([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in anns])
        names.append(["box"] + ["blob"] * (len(anns) - 1))
        scores.append([0.5 + 0.1 * k for k in range(len(anns))])
    (tmp_path / "detections").mkdir()
    pq.write_table(pa.table({"key": [f"{k}.jpg" for k in keys], "boxes": boxes,
                             "category": names, "score": scores}),
                   tmp_path / "detections" / "part-0.parquet")
    config = tmp_path / "segment.yaml"
    config.write_text(json.dumps({
        "input": {"urls": [str(tmp_path / "corpus")]}, "output": {"path": str(tmp_path / "seg")},
        "model": {"name": "sam_tiny"},
        "prompts": {"source": "parquet", "path": str(tmp_path / "detections")}}))
    assert main(["segment", "--config", str(config)]) == 0

    out = tmp_path / "coco.json"
    assert main(["export", str(tmp_path / "seg"), "--format", "coco", "--out", str(out)]) == 0
    coco = COCO(str(out))
    cats = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(cats) == ["blob", "box"]
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == sum(len(b) for b in boxes)
    by_score = sorted((a["score"], a["category_id"]) for a in anns if a["score"] < 0.55)
    assert all(c == cats["box"] for _, c in by_score)  # every first box is a "box"
    assert {a["category"] for a in anns} == {"box", "blob"}
    dt = coco.loadRes([{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")}
                       for a in anns])
    assert len(dt.getAnnIds()) == len(anns)
    rows = pads.dataset(str(tmp_path / "seg"), format="parquet").to_table().to_pylist()
    assert sorted(len(r["annotations"]) for r in rows) == sorted([0] + [len(b) for b in boxes])
    assert np.all([a["score"] is not None for r in rows for a in r["annotations"]])


def test_shipped_configs_are_valid_and_bad_prompts_are_refused():
    cfg = load_config("configs/segment_sa1b.yaml", cls=SegmentConfig)
    assert cfg.prompts.source == "sa1b" and cfg.prompts.multimask
    assert load_config("configs/segment_detections.yaml", cls=SegmentConfig).prompts.path
    with pytest.raises(ConfigError, match="prompts: path: expected the parquet file"):
        load_config("configs/segment_sa1b.yaml", ["prompts.source=parquet"], SegmentConfig)
    with pytest.raises(ConfigError, match="prompts: use: expected 'box' with source coco"):
        load_config("configs/segment_sa1b.yaml", ["prompts.source=coco", "prompts.path=x",
                                                  "prompts.use=point"], SegmentConfig)
    with pytest.raises(ConfigError, match="not by both"):
        load_config("configs/segment_sa1b.yaml", ["model.name=fastsam_s",
                                                  "prompts.use=box+point"], SegmentConfig)
