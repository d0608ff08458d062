"""The sample corpus: valid SA-1B shards whose RLE masks are the drawn shapes."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from operators.sample import write_sample_corpus


def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_shards_images_and_masks_are_consistent(tmp_path):
    paths = write_sample_corpus(str(tmp_path), shards=2, images_per_shard=3, seed=5)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["sa_000000.tar", "sa_000001.tar"]
    for path in paths:
        members = _members(path)
        names = [n for n, _ in members]
        assert len(names) == 6 and all(a.endswith(".jpg") and b == a[:-4] + ".json"
                                       for a, b in zip(names[::2], names[1::2], strict=True))
        for (_, jpg), (_, raw) in zip(members[::2], members[1::2], strict=True):
            meta = json.loads(raw)
            img = np.asarray(Image.open(io.BytesIO(jpg)))
            h, w = meta["image"]["height"], meta["image"]["width"]
            assert img.shape == (h, w, 3)
            assert meta["annotations"]
            union = np.zeros((h, w), bool)
            for ann in meta["annotations"]:
                assert set(ann) == {"id", "segmentation", "bbox", "area", "predicted_iou",
                                    "stability_score", "point_coords", "crop_box"}
                rle = {"size": ann["segmentation"]["size"],
                       "counts": ann["segmentation"]["counts"].encode()}
                m = mask_utils.decode(rle).astype(bool)
                assert m.shape == (h, w) and m.sum() == ann["area"] > 0
                assert not (union & m).any()  # visible masks do not overlap
                union |= m
                x, y = (int(v) for v in ann["point_coords"][0])
                assert m[y, x]
                # flat-coloured shape: most pixels near the shape's colour (JPEG rings at edges)
                px = img[m].astype(float)
                assert np.median(np.abs(px - np.median(px, axis=0)), axis=0).max() < 8


def test_same_seed_same_bytes(tmp_path):
    a = write_sample_corpus(str(tmp_path / "a"), shards=1, images_per_shard=2, seed=3)
    b = write_sample_corpus(str(tmp_path / "b"), shards=1, images_per_shard=2, seed=3)
    c = write_sample_corpus(str(tmp_path / "c"), shards=1, images_per_shard=2, seed=4)
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert read(a[0]) == read(b[0]) != read(c[0])


def test_writes_to_s3(s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    urls = write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=1,
                               storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    assert urls == [f"s3://{bucket}/corpus/sa_000000.tar", f"s3://{bucket}/corpus/sa_000001.tar"]
    with fs.open(urls[1], "rb") as f:
        assert [m.name for m in tarfile.open(fileobj=io.BytesIO(f.read()))] == [
            "sa_100001.jpg", "sa_100001.json"]
