"""`samdata segment` with SAM 3's box and point prompts (`sam3_interactive_tiny_test`, random
weights) on Ray: a local sample corpus -> one mask per SA-1B box, read back with
plain pyarrow; each image's first mask equals the protocol methods' on its box."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.dataset as pads
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from models import build_model
from operators.shards.listing import Shard
from operators.shards.read import Sample, iter_shard
from operators.shards.sample import write_sample_corpus
from pipelines.config import SegmentConfig, parse_config
from pipelines.segment import run_segment


def test_boxes_become_the_models_masks_on_ray(ray_local, tmp_path):
    urls = write_sample_corpus(str(tmp_path / "corpus"), shards=1, images_per_shard=2, seed=7)
    samples = {s.key: s for s in iter_shard(Shard.from_url("x", urls[0]))
               if isinstance(s, Sample)}
    cfg = parse_config({
        "input": {"urls": [str(tmp_path / "corpus")]}, "output": {"path": str(tmp_path / "seg")},
        "model": {"name": "sam3_interactive_tiny_test", "seed": 0},
    }, SegmentConfig)
    summary = run_segment(cfg)
    assert (summary.images_ok, summary.images_failed) == (2, 0)

    table = pads.dataset(str(tmp_path / "seg"), format="parquet").to_table()
    model = build_model("sam3_interactive_tiny_test", seed=0)
    for row in table.to_pylist():
        sample = samples[row["key"]]
        anns = sample.meta["annotations"]
        assert row["status"] == "ok" and row["model"] == "sam3_interactive_tiny_test"
        assert len(row["annotations"]) == len(anns) > 0
        for got in row["annotations"]:
            assert mask_utils.decode(rle_of(got)).shape == (row["height"], row["width"])
        # the first box, through the protocol methods: the mask of highest predicted IoU
        hw = (row["height"], row["width"])
        image = np.asarray(Image.open(io.BytesIO(sample.image)).convert("RGB"))
        pixels, _ = model.prepare_image(image)
        with torch.inference_mode():
            feats = model.embed_images_with_features(
                torch.from_numpy(pixels)[None].permute(0, 3, 1, 2))
            box = torch.tensor([row["annotations"][0]["prompt_box"]], dtype=torch.float64)
            low, iou = model.decode(feats["image_embed"],
                                    boxes=model.transform_boxes(box, hw).float(),
                                    high_res_features=feats["high_res_feats"])
            best = int(iou[0].argmax())
            mask = model.postprocess_masks(low[:, best : best + 1], hw)[0, 0] > 0
        ours = mask_utils.decode(rle_of(row["annotations"][0]))
        assert (ours == mask.numpy()).mean() > 0.999


def rle_of(ann: dict) -> dict:
    return {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
