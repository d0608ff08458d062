"""FastSAM end to end: a checkpoint file pickled like the official FastSAM-s.pt (an Ultralytics
module tree, made here without Ultralytics) is read through the restricted loader, from S3, by
`samdata autolabel`'s Ray actors; the SA-1B annotations come back from Parquet with plain pyarrow
and equal a direct call of the model; the COCO export loads in pycocotools."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from models import build_model
from models.checkpoint import CheckpointError
from models.yolov8_seg import C2f, SegmentHead, YoloV8Seg
from operators.config import GeneratorConfig
from operators.dataset.export import export_coco
from operators.dataset.maskset import load_source_image
from operators.everything.one_pass import OnePassGenerator
from operators.shards.sample import write_sample_corpus
from pipelines.autolabel import run_autolabel
from pipelines.config import AutolabelConfig, parse_config
from tests.fake_ultralytics import checkpoint_dict, fake_ultralytics, rename_tree, save
from tests.golden.make_fastsam import DATA, golden_state_dict

SA1B_FIELDS = {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
               "point_coords", "crop_box"}
# Detector settings for the sample corpus: FastSAM's IoU, a small letterbox for the CPU and a
# lower confidence (the golden weights were calibrated on another image).
DETECTION = {"detection_conf": 0.25, "detection_iou": 0.9, "detection_imgsz": 320}


def _official_name(module: torch.nn.Module) -> str | None:
    """Our YOLOv8-seg classes -> the Ultralytics class names of the official file."""
    if isinstance(module, YoloV8Seg):
        return "SegmentationModel"
    if isinstance(module, SegmentHead):
        return "Segment"
    name = type(module).__name__
    if type(module).__module__ == "models.yolov8_seg":
        return name  # Conv, C2f, Bottleneck, SPPF, Concat, DFL, Proto: the official names
    return None  # torch.nn layers keep their classes


@pytest.fixture(scope="module")
def fastsam_file(tmp_path_factory):
    """(path of a FastSAM-s.pt-like file, the model with the file's fp16-rounded weights)."""
    with np.load(DATA / "golden_fastsam_s.npz") as f:
        bn_mean, bn_var = f["bn_mean"], f["bn_var"]
    model = build_model("fastsam_s")
    model.load_state_dict(golden_state_dict(model, bn_mean, bn_var))
    path = tmp_path_factory.mktemp("ckpt") / "FastSAM-s.pt"
    with fake_ultralytics() as classes:
        assert C2f.__name__ in classes
        tree = rename_tree(model, lambda m: classes.get(_official_name(m) or "", None))
        save(checkpoint_dict(tree), path)  # halves the tree (as the official file: fp16)
    reference = build_model("fastsam_s")
    reference.load_state_dict({k: v.half().to(v.dtype) for k, v in
                               golden_state_dict(reference, bn_mean, bn_var).items()})
    return path, reference


def test_official_format_file_loads_strictly(fastsam_file):
    path, reference = fastsam_file
    model = build_model("fastsam_s", checkpoint=path,
                        sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    ours, ref = model.state_dict(), reference.state_dict()
    assert list(ours) == list(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)
    assert all(v.dtype == torch.float32 for k, v in ours.items()
               if not k.endswith("num_batches_tracked"))
    # A state dict file (what weights-only loading expects) is not an Ultralytics checkpoint
    plain = path.with_name("plain.pt")
    torch.save(ref, plain)
    with pytest.raises(CheckpointError, match="refusing to load global|expected a pickled"):
        build_model("fastsam_s", checkpoint=plain)


def test_forbidden_class_in_a_fastsam_file_is_refused(fastsam_file, tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("open('/tmp/never', 'w')",))

    with fake_ultralytics() as classes:
        tree = rename_tree(build_model("fastsam_s"),
                           lambda m: classes.get(_official_name(m) or "", None))
        tree.args = Payload()  # hidden in the module tree, as an attribute
        path = tmp_path / "FastSAM-s.pt"
        save(checkpoint_dict(tree), path)
    with pytest.raises(CheckpointError, match=r"refusing to load global 'builtins\.exec'"):
        build_model("fastsam_s", checkpoint=path)


def test_fastsam_autolabel_from_s3_end_to_end(ray_local, s3_bucket, s3_endpoint, fastsam_file,
                                              tmp_path):
    fs, bucket = s3_bucket
    path, reference = fastsam_file
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=2, seed=4,
                        storage_options=opts, min_side=160, max_side=320)
    fs.put(str(path), f"{bucket}/weights/FastSAM-s.pt")
    cfg = parse_config({
        "input": {"urls": [f"s3://{bucket}/corpus/"]}, "output": {"path": f"s3://{bucket}/al"},
        "model": {"name": "fastsam_s", "checkpoint": f"s3://{bucket}/weights/FastSAM-s.pt"},
        "storage": {"endpoint_url": s3_endpoint}, "compute": {"ray_batch_size": 2},
        "generator": DETECTION,
    }, AutolabelConfig)
    summary = run_autolabel(cfg)
    assert (summary.images_ok, summary.images_failed, summary.shards_done) == (4, 0, 2)

    table = pads.dataset(f"{bucket}/al", filesystem=fs, format="parquet").to_table()
    rows = sorted(table.to_pylist(), key=lambda r: r["key"])
    assert len(rows) == 4
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    settings = GeneratorConfig(**DETECTION)
    direct = OnePassGenerator(reference, settings)
    total = 0
    for row in rows:
        assert row["status"] == "ok" and row["model"] == "fastsam_s"
        assert row["checkpoint_sha256"] == digest
        assert json.loads(row["settings"]) == {**DETECTION, "stability_score_offset": 1.0}
        anns = row["annotations"]
        total += len(anns)
        h, w = row["height"], row["width"]
        for a in anns:
            assert set(a) == SA1B_FIELDS
            m = mask_utils.decode({"size": a["segmentation"]["size"],
                                   "counts": a["segmentation"]["counts"].encode()})
            assert m.shape == (h, w) and int(m.sum()) == a["area"] > 0
            assert a["point_coords"] == [] and a["crop_box"] == [0.0, 0.0, float(w), float(h)]
            assert 0.25 < a["predicted_iou"] <= 1.0 and 0.0 <= a["stability_score"] <= 1.0
        # The same annotations as the model called directly on the decoded image, with the
        # actor's thread count (cpus_per_actor 1): with random weights many mask logits sit
        # near the threshold, and another thread count flips pixels (IoU ~0.98 for some).
        image = load_source_image(row, opts)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            want = direct.generate([image])[0]
        finally:
            torch.set_num_threads(threads)
        assert [a["segmentation"]["counts"] for a in anns] == [
            a["segmentation"]["counts"] for a in want]
        assert np.allclose([a["predicted_iou"] for a in anns],
                           [a["predicted_iou"] for a in want], atol=1e-6)
    assert total > 0, "expected detections on the sample corpus"

    # COCO export of the one-pass labels loads in pycocotools
    out = tmp_path / "coco.json"
    export_coco(f"s3://{bucket}/al", str(out), storage_options=opts)
    coco = COCO(str(out))
    assert len(coco.getAnnIds()) == total and len(coco.getImgIds()) == 4

