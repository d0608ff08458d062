"""Exports a labeling tool opens: YOLO segment and per-mask PNG formats, images beside the
labels, and the filters every format applies (issue 26). No Ray: the label datasets are
built from sample corpora's own exact masks (tests/support.py label_dataset)."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from operators.dataset.export_polygon import shoelace_area
from operators.dataset.maskset import iter_rows
from operators.shards.sample import write_sample_corpus
from pipelines.cli import main
from tests.support import label_dataset

HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
          "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    """(label dataset root, {key: the image member's bytes}): 2 shards x 5 images of 96-160
    px, sa_2 an error row."""
    tmp = tmp_path_factory.mktemp("formats")
    corpus = write_sample_corpus(str(tmp / "corpus"), shards=2, images_per_shard=5, seed=7,
                                 min_side=96, max_side=160, max_shapes=6)
    label_dataset(tmp / "labels", corpus, failed=frozenset({"sa_2"}))
    return str(tmp / "labels"), _members(corpus)


def _members(corpus: list[str]) -> dict[str, bytes]:
    """{key: image bytes} of the tar shards, read with tarfile."""
    out = {}
    for path in corpus:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    out[m.name[:-4]] = tar.extractfile(m).read()
    return out


def _ok_rows(root: str) -> list[dict]:
    return [r for r in iter_rows(root) if r["status"] == "ok"]


def _decode(ann: dict) -> np.ndarray:
    seg = ann["segmentation"]
    return mask_utils.decode({"size": list(seg["size"]), "counts": seg["counts"]})


def _filled_largest_piece(mask: np.ndarray) -> tuple[int, int, bool]:
    """(pixels of the largest 8-connected piece with its holes filled, pieces, has holes), by
    scipy (not the exporter's cv2 path)."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    piece = lab == 1 + int(np.argmax(sizes))
    filled = ndimage.binary_fill_holes(piece)
    return int(filled.sum()), n, bool(filled.sum() > piece.sum())


def _fill_polygon(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool HxW: the float Nx2 polygon rasterized by pycocotools."""
    rle = mask_utils.merge(mask_utils.frPyObjects([points.ravel().tolist()], h, w))
    return mask_utils.decode(rle).astype(bool)


def test_yolo_round_trip(labels, tmp_path, capsys):
    root, members = labels
    out = tmp_path / "yolo"
    assert main(["export", root, "--format", "yolo", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "exported 9 images" in said
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"path": str(out), "train": "images", "val": "images", "nc": 1,
                    "names": {0: "object"}}
    assert not (out / "images" / "sa_000000" / "sa_2.jpg").exists()  # the error row
    worst, checked, lines_total, masks_total, multi = 0.0, 0, 0, 0, 0
    for row in _ok_rows(root):
        image = out / "images" / row["shard"] / f"{row['key']}.jpg"
        assert image.read_bytes() == members[row["key"]]
        lines = (out / "labels" / row["shard"] / f"{row['key']}.txt").read_text().splitlines()
        anns = row["annotations"]
        assert len(lines) == len(anns)  # every mask of the corpus is non-empty: none skipped
        lines_total += len(lines)
        masks_total += len(anns)
        w, h = row["width"], row["height"]
        for line, ann in zip(lines, anns, strict=True):
            cls, *coords = line.split()
            xy = np.array(coords, float).reshape(-1, 2)
            assert cls == "0" and len(xy) >= 3 and 0 <= xy.min() and xy.max() <= 1
            area = shoelace_area(xy * [w, h])
            mask = _decode(ann)
            filled, pieces, holes = _filled_largest_piece(mask)
            multi += pieces > 1
            assert area == pytest.approx(filled, abs=0.01)  # the outline of the largest piece
            if pieces == 1:  # pycocotools (COCO's pixel convention) fills it back exactly
                back = _fill_polygon(xy * [w, h], h, w)
                assert np.array_equal(back, ndimage.binary_fill_holes(mask))
            if ann["bbox"][2] > 32 and ann["bbox"][3] > 32 and pieces == 1 and not holes:
                worst = max(worst, abs(area - ann["area"]) / ann["area"])
                checked += 1
    assert masks_total == lines_total > 10 and checked > 5
    assert worst <= 0.02, worst
    assert multi > 0 and f"{multi} masks of several pieces kept their largest" in said
    print(f"yolo: {checked} masks over 32x32 px, worst polygon area error {worst:.2e}")


def test_masks_round_trip(labels, tmp_path):
    root, _ = labels
    out = tmp_path / "masks"
    assert main(["export", root, "--format", "masks", "--out", str(out)]) == 0
    assert not (out / "sa_000000" / "sa_2").exists()
    for row in _ok_rows(root):
        folder = out / row["shard"] / row["key"]
        anns = row["annotations"]
        assert sorted(p.name for p in folder.glob("*.png")) == sorted(
            f"{i}.png" for i in range(len(anns)))
        for i, ann in enumerate(anns):
            png = Image.open(folder / f"{i}.png")
            assert png.mode == "L" and png.size == (row["width"], row["height"])
            assert np.array_equal(np.asarray(png), _decode(ann) * 255)
        text = (folder / "metadata.csv").read_text()
        assert text.split("\n")[0] == HEADER and not text.endswith("\n")
        got = list(csv.DictReader(io.StringIO(text)))
        assert len(got) == len(anns)
        for i, (rec, ann) in enumerate(zip(got, anns, strict=True)):
            x, y, bw, bh = ann["bbox"]
            cx, cy, cw, ch = ann["crop_box"]
            px, py = ann["point_coords"][0]
            assert int(rec["id"]) == i and int(rec["area"]) == ann["area"]
            assert [float(rec[k]) for k in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h")] == \
                [x, y, bw, bh]
            assert [float(rec["point_input_x"]), float(rec["point_input_y"])] == [px, py]
            assert float(rec["predicted_iou"]) == ann["predicted_iou"]
            assert float(rec["stability_score"]) == ann["stability_score"]
            assert [float(rec[k]) for k in ("crop_box_x0", "crop_box_y0", "crop_box_w",
                                            "crop_box_h")] == [cx, cy, cw, ch]


def test_images_make_file_names_resolve(labels, tmp_path):
    root, members = labels
    images = tmp_path / "images"
    coco = tmp_path / "coco.json"
    assert main(["export", root, "--format", "coco", "--out", str(coco),
                 "--images", str(images)]) == 0
    entries = json.loads(coco.read_text())["images"]
    assert len(entries) == 9
    for entry in entries:  # file_name is relative to the image root DIR
        path = images / entry["file_name"]
        assert entry["file_name"] == f"{entry['samdata_shard']}/{entry['samdata_key']}.jpg"
        assert path.read_bytes() == members[entry["samdata_key"]]  # the bytes, not re-encoded
        assert Image.open(path).size == (entry["width"], entry["height"])
    assert len(list(images.rglob("*.*"))) == 9  # the error row's image is not copied
    # SA-1B with DIR = OUT: each image beside its JSON, file_name its base name
    out = tmp_path / "sa1b"
    assert main(["export", root, "--format", "sa1b", "--out", str(out),
                 "--images", str(out)]) == 0
    for js in out.glob("*/*.json"):
        record = json.loads(js.read_text())["image"]
        assert record["file_name"] == f"{js.stem}.jpg"
        assert (js.parent / record["file_name"]).read_bytes() == members[js.stem]
    # masks with DIR elsewhere
    assert main(["export", root, "--format", "masks", "--out", str(tmp_path / "m"),
                 "--images", str(tmp_path / "mi")]) == 0
    assert len(list((tmp_path / "mi").rglob("*.jpg"))) == 9


# -- filters and categories on crafted datasets -------------------------------------------------

def _rle_ann(mask: np.ndarray, ann_id: int, iou: float, score: float | None = None,
             category: str | None = None, category_id: int | None = None) -> dict:
    """An annotation struct of the segment schema for the bool HxW `mask`."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    h, w = mask.shape
    return {"id": ann_id, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
            "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": int(mask.sum()),
            "predicted_iou": iou, "stability_score": 0.9, "point_coords": [],
            "crop_box": [0.0, 0.0, float(w), float(h)], "score": score, "category": category,
            "category_id": category_id}


def _crafted(root, corpus: list[str], annotations) -> None:
    """A committed segment dataset over `corpus` whose image rows carry
    annotations(height, width) (a list of segment annotation dicts)."""
    import hashlib

    import pyarrow.parquet as pq

    from operators.shards.listing import Shard
    from operators.shards.read import Sample, iter_shard
    from operators.shards.write import commit_shard, existing_parts, segments_table

    for url in corpus:
        shard = Shard.from_url(url.rsplit("/", 1)[-1][:-4], url)
        rows = [s for s in iter_shard(shard) if isinstance(s, Sample)]
        anns = np.empty(len(rows), dtype=object)
        anns[:] = [annotations(s.meta["image"]["height"], s.meta["image"]["width"])
                   for s in rows]
        n = len(rows)
        batch = {"image_id": np.array([s.meta["image"]["image_id"] for s in rows]),
                 "key": np.array([s.key for s in rows], dtype=object),
                 "shard": np.array([shard.name] * n, dtype=object),
                 "source_uri": np.array([f"{url}#{s.key}" for s in rows], dtype=object),
                 "orig_hw": np.array([[s.meta["image"]["height"], s.meta["image"]["width"]]
                                      for s in rows]),
                 "model": np.array(["crafted"] * n, dtype=object),
                 "checkpoint_sha256": np.array([""] * n, dtype=object),
                 "settings": np.array(["{}"] * n, dtype=object),
                 "annotations": anns,
                 "status": np.array(["ok"] * n, dtype=object),
                 "error": np.array([""] * n, dtype=object),
                 "image_sha256": np.array([hashlib.sha256(s.image).hexdigest() for s in rows],
                                          dtype=object)}
        (root / shard.name).mkdir(parents=True)
        pq.write_table(segments_table(batch), root / shard.name / f"{shard.name}-a.parquet")
        commit_shard(str(root), shard.name, {"images": n,
                                             "parts": existing_parts(str(root), shard.name).parts})


def _five(h: int, w: int) -> list[dict]:
    """A: the whole image (iou .99), B: 96% of it (.5), C: 90% (.7), D: 10x10 px (.95),
    E: 5x5 px (iou .3, carried score .97)."""
    def rows(frac):
        m = np.zeros((h, w), bool)
        m[: int(np.ceil(frac * h)), :] = True
        return m

    d, e = np.zeros((h, w), bool), np.zeros((h, w), bool)
    d[2:12, 2:12] = True
    e[20:25, 20:25] = True
    return [_rle_ann(rows(1.0), 1, 0.99), _rle_ann(rows(0.96), 2, 0.5),
            _rle_ann(rows(0.90), 3, 0.7), _rle_ann(d, 4, 0.95), _rle_ann(e, 5, 0.3, 0.97)]


@pytest.mark.parametrize("flags, kept", [
    ([], [1, 2, 3, 4, 5]),
    (["--min-score", "0.6"], [1, 3, 4, 5]),  # B (.5) out; E passes on its carried score
    (["--min-area", "100"], [1, 2, 3, 4]),  # E (25 px) out, D (100 px) in
    (["--skip-background"], [3, 4, 5]),  # A (100%) and B (96%) out, C (90%) in
    (["--top-k", "2"], [1, 5]),  # the two best scores (.99, .97), in dataset order
    (["--min-score", "0.6", "--skip-background", "--top-k", "1"], [5]),
])
def test_filters_keep_exactly_what_they_should(tmp_path, flags, kept):
    corpus = write_sample_corpus(str(tmp_path / "corpus"), shards=1, images_per_shard=2,
                                 min_side=96, max_side=120)
    _crafted(tmp_path / "ds", corpus, _five)
    ds = str(tmp_path / "ds")
    assert main(["export", ds, "--format", "coco", "--out", str(tmp_path / "c.json"), *flags]) == 0
    anns = json.loads((tmp_path / "c.json").read_text())["annotations"]
    assert [a["id"] for a in anns] == list(range(1, 2 * len(kept) + 1))
    ious = [a["predicted_iou"] for a in _five(100, 100)]
    assert [a["predicted_iou"] for a in anns[:len(kept)]] == [ious[i - 1] for i in kept]
    assert main(["export", ds, "--format", "sa1b", "--out", str(tmp_path / "s"), *flags]) == 0
    for js in (tmp_path / "s").glob("*/*.json"):
        assert [a["id"] for a in json.loads(js.read_text())["annotations"]] == kept
    assert main(["export", ds, "--format", "yolo", "--out", str(tmp_path / "y"), *flags]) == 0
    for txt in (tmp_path / "y" / "labels").glob("*/*.txt"):
        assert len(txt.read_text().splitlines()) == len(kept)
    assert main(["export", ds, "--format", "masks", "--out", str(tmp_path / "m"), *flags]) == 0
    for csv_path in (tmp_path / "m").glob("*/*/metadata.csv"):
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
        assert len(rows) == len(kept) and len(list(csv_path.parent.glob("*.png"))) == len(kept)
        assert all(r["point_input_x"] == "" for r in rows)  # no prompt point: empty fields


def test_yolo_names_the_carried_categories(tmp_path):
    corpus = write_sample_corpus(str(tmp_path / "corpus"), shards=1, images_per_shard=2,
                                 min_side=96, max_side=120)

    def anns(h, w):
        a, b, c = (np.zeros((h, w), bool) for _ in range(3))
        a[5:40, 5:40], b[50:60, 50:90], c[70:80, 10:20] = True, True, True
        return [_rle_ann(a, 1, 0.9, category="dog", category_id=18),
                _rle_ann(b, 2, 0.9, category="cat", category_id=17),
                _rle_ann(c, 3, 0.9, category="dog", category_id=18),
                _rle_ann(np.zeros((h, w), bool), 4, 0.9, category="cat", category_id=17)]

    _crafted(tmp_path / "ds", corpus, anns)
    out = tmp_path / "y"
    assert main(["export", str(tmp_path / "ds"), "--format", "yolo", "--out", str(out)]) == 0
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "dog", 1: "cat"} and data["nc"] == 2
    for txt in (out / "labels").glob("*/*.txt"):
        # the empty mask (4) gives no polygon: skipped, and counted
        assert [line.split()[0] for line in txt.read_text().splitlines()] == ["0", "1", "0"]
    from operators.dataset.export_yolo import export_yolo

    summary = export_yolo(str(tmp_path / "ds"), str(tmp_path / "y2"))
    assert (summary["annotations"], summary["skipped"]) == (6, 2)


def test_exports_never_write_outside_out(tmp_path):
    buf = io.BytesIO()
    jpg = io.BytesIO()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(jpg, "JPEG")
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, key in enumerate(["../../outside", "/abs/path", "images/fine"]):
            meta = {"image": {"image_id": i + 1, "width": 50, "height": 40}}
            for name, data in ((f"{key}.jpg", jpg.getvalue()),
                               (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "esc.tar").write_bytes(buf.getvalue())
    square = np.zeros((40, 50), bool)
    square[5:15, 5:25] = True
    _crafted(tmp_path / "ds", [str(tmp_path / "in" / "esc.tar")],
             lambda h, w: [_rle_ann(square, 1, 0.9)])
    ds, export = str(tmp_path / "ds"), tmp_path / "export"
    here = export / "here"
    for fmt, extra in (("sa1b", ["--images", str(here)]), ("yolo", []),
                       ("masks", ["--images", str(here / "img")])):
        assert main(["export", ds, "--format", fmt, "--out", str(here / fmt), *extra]) == 0
    assert main(["export", ds, "--format", "coco", "--out", str(here / "c.json"),
                 "--images", str(here / "ci")]) == 0
    assert sorted(p.name for p in export.iterdir()) == ["here"]
    assert not list(tmp_path.glob("outside*")) and not (tmp_path / "in" / "outside.jpg").exists()
    yolo = sorted(str(p.relative_to(here / "yolo")) for p in (here / "yolo").rglob("*.*"))
    assert yolo == ["data.yaml", "images/esc/__/__/outside.jpg", "images/esc/abs/path.jpg",
                    "images/esc/images_/fine.jpg", "labels/esc/__/__/outside.txt",
                    "labels/esc/abs/path.txt", "labels/esc/images_/fine.txt"]
    entries = json.loads((here / "c.json").read_text())["images"]
    assert sorted(e["file_name"] for e in entries) == ["esc/__/__/outside.jpg",
                                                       "esc/abs/path.jpg", "esc/images/fine.jpg"]
    for e in entries:
        assert (here / "ci" / e["file_name"]).is_file()


def test_refused_exports(labels, tmp_path, capsys):
    root, _ = labels
    assert main(["export", root, "--format", "yolo", "--out", str(tmp_path / "y"),
                 "--images", str(tmp_path / "i")]) == 2
    assert "expected no --images" in capsys.readouterr().err
    assert main(["export", root, "--format", "coco", "--out", str(tmp_path / "c.json"),
                 "--top-k", "0"]) == 2
    assert "expected top_k >= 1, got 0" in capsys.readouterr().err


def test_colliding_image_names_are_refused(tmp_path):
    buf = io.BytesIO()
    jpg = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(jpg, "JPEG")
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, key in enumerate(["a:b", "a_b"]):
            meta = {"image": {"image_id": i + 1, "width": 20, "height": 20}}
            for name, data in ((f"{key}.jpg", jpg.getvalue()),
                               (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "k.tar").write_bytes(buf.getvalue())
    _crafted(tmp_path / "ds", [str(tmp_path / "in" / "k.tar")], lambda h, w: [])
    from operators.dataset.export import export_coco

    with pytest.raises(ValueError, match="'k/a:b' and 'k/a_b' would both be written as"):
        export_coco(str(tmp_path / "ds"), str(tmp_path / "c.json"), images=str(tmp_path / "i"))


def test_yolo_and_images_on_s3(s3_bucket, s3_endpoint, tmp_path):
    fs, bucket = s3_bucket
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    args = dict(shards=1, images_per_shard=3, seed=3, min_side=96, max_side=120)
    local = write_sample_corpus(str(tmp_path / "corpus"), **args)
    remote = write_sample_corpus(f"s3://{bucket}/corpus", storage_options=opts, **args)
    label_dataset(tmp_path / "labels", local, source_of=lambda url: remote[0])
    members = _members(local)
    labels = str(tmp_path / "labels")
    assert main(["export", labels, "--format", "yolo", "--out", f"s3://{bucket}/yolo",
                 "--endpoint-url", s3_endpoint]) == 0
    data = yaml.safe_load(fs.cat(f"{bucket}/yolo/data.yaml"))
    assert data["path"] == f"s3://{bucket}/yolo" and data["names"] == {0: "object"}
    for row in _ok_rows(labels):
        assert fs.cat(f"{bucket}/yolo/images/sa_000000/{row['key']}.jpg") == members[row["key"]]
        lines = fs.cat(f"{bucket}/yolo/labels/sa_000000/{row['key']}.txt").decode().splitlines()
        assert len(lines) == len(row["annotations"])
    assert main(["export", labels, "--format", "coco", "--out", f"s3://{bucket}/c.json",
                 "--images", f"s3://{bucket}/img", "--endpoint-url", s3_endpoint]) == 0
    for entry in json.loads(fs.cat(f"{bucket}/c.json"))["images"]:
        assert fs.cat(f"{bucket}/img/{entry['file_name']}") == members[entry["samdata_key"]]
