"""The sample corpus: valid SA-1B shards whose RLE masks are the drawn shapes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from operators.shards.sample import write_sample_corpus

SA1B_FIELDS = {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
               "point_coords", "crop_box"}


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def _decode(ann: dict) -> np.ndarray:
    """bool HxW mask of an annotation's RLE (counts given back to pycocotools as bytes)."""
    seg = ann["segmentation"]
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """bool HxW: pixels of bool HxW `mask` whose (2r+1)x(2r+1) square neighbourhood is inside it."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.ones_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= padded[dy:dy + h, dx:dx + w]
    return out


def _check_image(jpg: bytes, meta: dict, image_id: int, min_side: int, max_side: int) -> None:
    """One image and its json: sizes, SA-1B fields, RLE vs area/bbox/point, flat distinct shapes."""
    assert meta["image"]["image_id"] == image_id
    assert meta["image"]["file_name"] == f"sa_{image_id}.jpg"
    h, w = meta["image"]["height"], meta["image"]["width"]
    assert min_side <= h <= max_side and min_side <= w <= max_side
    img = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    assert img.shape == (h, w, 3)
    assert 1 <= len(meta["annotations"]) <= 4
    union = np.zeros((h, w), bool)
    colours = []
    for ann in meta["annotations"]:
        assert set(ann) == SA1B_FIELDS
        assert ann["segmentation"]["size"] == [h, w]
        m = _decode(ann)
        assert m.shape == (h, w) and m.sum() == ann["area"] > 0
        ys, xs = np.nonzero(m)
        bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == [float(v) for v in bbox]
        assert all(isinstance(v, float) for v in ann["bbox"])
        assert not (union & m).any()  # visible masks do not overlap
        union |= m
        (x, y), = ann["point_coords"]
        assert isinstance(x, float) and m[int(y), int(x)]
        assert ann["crop_box"] == [0.0, 0.0, float(w), float(h)]
        assert ann["predicted_iou"] == ann["stability_score"] == 1.0
        # flat-coloured shape: its interior (away from JPEG edge ringing) is one colour
        inner = _erode(m, 3)
        if inner.sum() >= 16:
            px = img[inner].astype(float)
            med = np.median(px, axis=0)
            assert np.abs(px - med).max(axis=1).mean() < 6
            colours.append(med)
    for i, a in enumerate(colours):  # shapes differ in colour (drawn >= 48 apart)
        assert all(np.abs(a - b).max() > 24 for b in colours[i + 1:])


def test_shards_images_and_masks_are_consistent(tmp_path):
    paths = write_sample_corpus(str(tmp_path), shards=2, images_per_shard=3, seed=5)
    assert paths == [str(tmp_path / "sa_000000.tar"), str(tmp_path / "sa_000001.tar")]
    ann_ids = []
    for s, path in enumerate(paths):
        members = _members(Path(path).read_bytes())
        ids = [s * 100_000 + i + 1 for i in range(3)]
        assert [n for n, _ in members] == [f"sa_{i}.{ext}" for i in ids for ext in ("jpg", "json")]
        for image_id, (_, jpg), (_, raw) in zip(ids, members[::2], members[1::2], strict=True):
            meta = json.loads(raw)
            _check_image(jpg, meta, image_id, 48, 160)
            ann_ids += [a["id"] for a in meta["annotations"]]
    assert len(ann_ids) == len(set(ann_ids))


def test_many_small_images_and_first_shard(tmp_path):
    paths = write_sample_corpus(str(tmp_path / "c"), shards=1, images_per_shard=12, seed=11,
                                min_side=8, max_side=24, first_shard=7)
    assert [Path(p).name for p in paths] == ["sa_000007.tar"]
    members = _members(Path(paths[0]).read_bytes())
    assert len(members) == 24
    for i, ((jpg_name, jpg), (_, raw)) in enumerate(zip(members[::2], members[1::2], strict=True)):
        image_id = 700_000 + i + 1
        assert jpg_name == f"sa_{image_id}.jpg"
        meta = json.loads(raw)
        h, w = meta["image"]["height"], meta["image"]["width"]
        assert 8 <= h <= 24 and 8 <= w <= 24
        assert np.asarray(Image.open(io.BytesIO(jpg))).shape == (h, w, 3)
        for ann in meta["annotations"]:
            assert _decode(ann).sum() == ann["area"] > 0


def test_same_seed_same_bytes(tmp_path):
    a = write_sample_corpus(str(tmp_path / "a"), shards=1, images_per_shard=2, seed=3)
    b = write_sample_corpus(str(tmp_path / "b"), shards=1, images_per_shard=2, seed=3)
    c = write_sample_corpus(str(tmp_path / "c"), shards=1, images_per_shard=2, seed=4)
    d = write_sample_corpus(str(tmp_path / "d"), shards=2, images_per_shard=2, seed=3)
    data = [Path(p[0]).read_bytes() for p in (a, b, c, d)]
    assert data[0] == data[1] == data[3] != data[2]  # a shard does not depend on the others


@pytest.mark.parametrize("kwargs", [
    {"min_side": 0}, {"min_side": 50, "max_side": 40}, {"shards": -1}, {"first_shard": -1},
    {"images_per_shard": 100_000},
])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_sample_corpus(str(tmp_path), **kwargs)
    assert not list(tmp_path.iterdir())


def test_writes_to_s3(s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    urls = write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=1,
                               storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    assert urls == [f"s3://{bucket}/corpus/sa_000000.tar", f"s3://{bucket}/corpus/sa_000001.tar"]
    assert sorted(fs.ls(f"{bucket}/corpus")) == [f"{bucket}/corpus/sa_00000{i}.tar" for i in (0, 1)]
    members = _members(fs.cat_file(urls[1]))
    assert [n for n, _ in members] == ["sa_100001.jpg", "sa_100001.json"]
    _check_image(members[0][1], json.loads(members[1][1]), 100_001, 48, 160)


def test_richer_sample_images_keep_exact_masks(tmp_path):
    """More shapes and grain (the demo's corpus): each annotation still decodes to the pixels
    of its shape, now textured; the default settings' bytes are unchanged by the options."""
    import io
    import json
    import tarfile

    from PIL import Image
    from pycocotools import mask as mask_utils

    plain = write_sample_corpus(str(tmp_path / "a"), shards=1, images_per_shard=2, seed=5)
    again = write_sample_corpus(str(tmp_path / "b"), shards=1, images_per_shard=2, seed=5,
                                max_shapes=4, texture=0.0)
    assert open(plain[0], "rb").read() == open(again[0], "rb").read()
    rich = write_sample_corpus(str(tmp_path / "c"), shards=1, images_per_shard=3, seed=5,
                               min_side=256, max_side=320, max_shapes=8, texture=6.0)
    with tarfile.open(rich[0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    shapes = 0
    for name, data in members.items():
        if not name.endswith(".json"):
            continue
        meta = json.loads(data)
        img = np.asarray(Image.open(io.BytesIO(members[name[:-5] + ".jpg"])).convert("RGB"))
        assert 256 <= min(img.shape[:2]) and max(img.shape[:2]) <= 320
        for ann in meta["annotations"]:
            m = mask_utils.decode({**ann["segmentation"],
                                   "counts": ann["segmentation"]["counts"].encode()}) > 0
            assert m.shape == img.shape[:2] and m.sum() == ann["area"] > 0
            assert img[m].std(axis=0).max() > 2  # textured, not flat
            shapes += 1
    assert shapes > 3 * 2  # more than the default's 1-4 on average
    with pytest.raises(ValueError, match="max_shapes"):
        write_sample_corpus(str(tmp_path / "d"), max_shapes=9)


def test_background_is_the_last_annotation_and_the_masks_tile_the_image(tmp_path):
    """With `background`, every pixel belongs to exactly one mask: the shapes' as without it
    (same ids, same RLE), then the background's."""
    without = write_sample_corpus(str(tmp_path / "a"), shards=1, images_per_shard=3, seed=2)
    with_bg = write_sample_corpus(str(tmp_path / "b"), shards=1, images_per_shard=3, seed=2,
                                  background=True)
    plain = dict(_members(Path(without[0]).read_bytes()))
    rich = dict(_members(Path(with_bg[0]).read_bytes()))
    assert plain.keys() == rich.keys()
    for name in (n for n in rich if n.endswith(".json")):
        shapes = json.loads(plain[name])["annotations"]
        anns = json.loads(rich[name])["annotations"]
        assert anns[:-1] == shapes and len(anns) == len(shapes) + 1
        masks = np.stack([_decode(a) for a in anns])
        assert (masks.sum(axis=0) == 1).all()  # a partition of the image
        bg = anns[-1]
        assert bg["id"] == shapes[-1]["id"] + 1 and masks[-1].sum() == bg["area"]
        assert rich[name[:-5] + ".jpg"] == plain[name[:-5] + ".jpg"]  # same pixels
