"""Auto-labels out of Parquet: SA-1B/COCO export that pycocotools loads, and overlays."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from operators.dataset.overlay import draw_overlay
from operators.shards.sample import write_sample_corpus
from pipelines.autolabel import run_autolabel
from pipelines.cli import main
from pipelines.config import AutolabelConfig, parse_config


def _corrupt_shard(fs, path: str) -> None:
    """An SA-1B shard whose one image is not a JPEG."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("sa_777.jpg", b"not a jpeg"),
                           ("sa_777.json", json.dumps({"image": {"image_id": 777}}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fs.pipe_file(path, buf.getvalue())


def test_export_and_show_from_s3(ray_local, s3_bucket, s3_endpoint, tmp_path, capsys):
    fs, bucket = s3_bucket
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    write_sample_corpus(f"s3://{bucket}/corpus", shards=1, images_per_shard=3, seed=4,
                        storage_options=opts)
    _corrupt_shard(fs, f"{bucket}/corpus/sa_000001.tar")
    cfg = parse_config({
        "input": {"urls": [f"s3://{bucket}/corpus/"]}, "output": {"path": f"s3://{bucket}/al"},
        "model": {"name": "sam_tiny"}, "storage": {"endpoint_url": s3_endpoint},
        "generator": {"points_per_side": 4, "pred_iou_thresh": -1,
                      "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
    }, AutolabelConfig)
    summary = run_autolabel(cfg)
    assert (summary.images_ok, summary.images_failed) == (3, 1)
    dataset = f"s3://{bucket}/al"

    # COCO: pycocotools loads it, masks decode to the image size, COCOeval runs on it
    coco_path = tmp_path / "coco.json"
    assert main(["export", dataset, "--format", "coco", "--out", str(coco_path),
                 "--endpoint-url", s3_endpoint]) == 0
    assert "left out 1 images" in capsys.readouterr().err
    gt = COCO(str(coco_path))
    assert len(gt.getImgIds()) == 3 and gt.getCatIds() == [1]
    assert 777 not in gt.getImgIds()  # the corrupt image: reported, not exported
    data = json.loads(coco_path.read_text())
    assert [f["key"] for f in data["info"]["failed_images"]] == ["sa_777"]
    anns = gt.loadAnns(gt.getAnnIds())
    assert len(anns) > 3 and min(a["id"] for a in anns) == 1
    for ann in anns:
        img = gt.loadImgs(ann["image_id"])[0]
        mask = gt.annToMask(ann)
        assert mask.shape == (img["height"], img["width"]) and mask.sum() == ann["area"]
    dt = gt.loadRes(data["annotations"])
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # labels evaluated against themselves

    # SA-1B: one file per image, the annotations of its row
    out = tmp_path / "sa1b"
    assert main(["export", dataset, "--format", "sa1b", "--out", str(out),
                 "--endpoint-url", s3_endpoint]) == 0
    files = sorted(out.glob("*/*.json"))
    assert [f.name for f in files] == ["sa_1.json", "sa_2.json", "sa_3.json"]
    record = json.loads(files[0].read_text())
    assert record["image"] == {"image_id": 1, "width": gt.loadImgs(1)[0]["width"],
                               "height": gt.loadImgs(1)[0]["height"], "file_name": "sa_1.jpg"}
    assert len(record["annotations"]) == len(gt.getAnnIds(imgIds=[1]))
    assert {a["segmentation"]["counts"] for a in record["annotations"]} == \
        {a["segmentation"]["counts"] for a in gt.loadAnns(gt.getAnnIds(imgIds=[1]))}

    # Overlay of one image, and a contact sheet
    png = tmp_path / "overlay.png"
    assert main(["show", dataset, "--image-id", "2", "--out", str(png),
                 "--endpoint-url", s3_endpoint]) == 0
    picture = np.asarray(Image.open(png))
    info = gt.loadImgs(2)[0]
    assert picture.shape == (info["height"], info["width"], 3)
    sheet = tmp_path / "sheet.png"
    assert main(["show", dataset, "--sheet", "3", "--columns", "2", "--out", str(sheet),
                 "--endpoint-url", s3_endpoint]) == 0
    assert np.asarray(Image.open(sheet)).shape[:2] == (2 * (320 + 16), 2 * 320)
    assert main(["show", dataset, "--image-id", "424242", "--out", str(png),
                 "--endpoint-url", s3_endpoint]) == 2
    assert "image_id 424242" in capsys.readouterr().err


def test_overlay_tints_exactly_the_masked_pixels():
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    ann = {"segmentation": {"size": [40, 60], "counts": rle["counts"].decode()},
           "area": int(mask.sum()), "bbox": [5, 10, 20, 10], "point_coords": [[15.0, 15.0]]}
    plain = draw_overlay(image, [ann], boxes=False, points=False)
    changed = (plain != image).any(axis=2)
    assert (changed == mask.astype(bool)).all()
    with_box = draw_overlay(image, [ann])
    assert (with_box[35:, :] == 100).all() and (with_box[5:30, 5] != 100).any()
    with pytest.raises(ValueError, match="image size"):
        draw_overlay(image[:30], [ann])
