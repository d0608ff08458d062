"""Reading shards: every image becomes a sample, broken ones with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from operators.shards.decode import DecodeError, decode_image
from operators.shards.listing import list_shards, parse_range
from operators.shards.prepare import model_skeleton, prepare_sample
from operators.shards.read import Sample, ShardEnd, iter_shard
from tests.bad_corpus import EXPECTED_BAD, bomb_png, jpeg, write_bad_corpus


def _read(shard):
    parts = list(iter_shard(shard))
    assert isinstance(parts[-1], ShardEnd)
    return parts[:-1], parts[-1]


def test_every_failure_becomes_a_row_with_its_error(tmp_path):
    counts = write_bad_corpus(tmp_path)
    shards = list_shards([str(tmp_path)])
    assert [s.name for s in shards] == ["sa_000000", "sa_000001"]
    samples, end = _read(shards[0])
    assert end.count == len(samples) == counts["sa_000000"]
    assert end.error is None and end.skipped_members == 1  # README.txt
    model = model_skeleton("sam_tiny")
    rows = {s.key: prepare_sample(s, "sa_000000", model, max_image_pixels=2_000_000,
                                  include_image=False) for s in samples}
    assert set(rows) == set(EXPECTED_BAD)
    for key, expected in EXPECTED_BAD.items():
        row = rows[key]
        if expected == "ok":
            assert row["status"] == "ok", (key, row["error"])
            assert row["pixels"].shape == (128, 128, 3)
        else:
            assert row["status"] == "error", key
            assert expected in row["error"], (key, row["error"])
    # EXIF orientation applied: stored 40x60, displayed 60x40
    assert rows["sa_11"]["orig_hw"].tolist() == [60, 40]
    assert rows["sa_1"]["image_id"] == 1


def test_truncated_tar_yields_what_it_holds_then_a_shard_error(tmp_path):
    counts = write_bad_corpus(tmp_path)
    shard = list_shards([str(tmp_path / "sa_000001.tar")])[0]
    samples, end = _read(shard)
    assert end.count == len(samples) == counts["sa_000001"]
    assert "unreadable" in end.error
    ok = [s for s in samples if s.error is None and s.image]
    assert [s.key for s in ok][:2] == ["sa_101", "sa_102"]
    broken = samples[-1]
    model = model_skeleton("sam_tiny")
    row = prepare_sample(broken, "sa_000001", model, max_image_pixels=10**8, include_image=False)
    assert row["status"] == "error"


def test_a_vanished_shard_is_unavailable_not_a_truncated_one(tmp_path):
    """An object gone between listing and reading is a storage failure: the shard is left
    uncommitted for a rerun (an end row with shard_unavailable), never committed as empty."""
    from operators.config import InputConfig
    from operators.shards.listing import Shard
    from operators.shards.prepare import read_and_prepare
    from operators.shards.resumable import StorageUnavailable

    with pytest.raises(StorageUnavailable, match="gone.tar.*FileNotFoundError"):
        _read(Shard("sa_000009", str(tmp_path / "gone.tar"), "tar"))
    item = {"shard": "sa_000009", "url": str(tmp_path / "gone.tar"), "container": "tar"}
    (end,) = read_and_prepare(item, "sam_tiny", InputConfig(urls=["-"]))
    assert end["is_end"] and "gone.tar" in end["shard_unavailable"] and not end["shard_error"]


def test_folder_of_images_is_one_shard(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg(20, 30))
    (folder / "sub" / "b.jpg").write_bytes(jpeg(25, 35, 1))
    (folder / "notes.txt").write_text("x")
    shards = list_shards([str(folder)])
    assert [(s.name, s.container) for s in shards] == [("photos", "folder")]
    samples, end = _read(shards[0])
    assert sorted(s.key for s in samples) == ["a", "sub/b"]
    assert end.count == 2 and end.skipped_members == 1


def test_shard_range_limit_and_errors(tmp_path):
    for i in range(5):
        (tmp_path / f"sa_{i:06d}.tar").write_bytes(b"")
    names = [s.name for s in list_shards([str(tmp_path / "sa_*.tar")],
                                         shard_range="sa_000001..sa_000003")]
    assert names == ["sa_000001", "sa_000002", "sa_000003"]
    assert len(list_shards([str(tmp_path)], limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="no shard found"):
        list_shards([str(tmp_path / "nothing_here")])
    with pytest.raises(ValueError, match="FIRST..LAST"):
        parse_range("sa_000001")


def test_decode_errors_and_conversions():
    with pytest.raises(DecodeError, match="0 bytes"):
        decode_image(b"")
    with pytest.raises(DecodeError, match="over max_image_pixels=1000"):
        decode_image(bomb_png(100), max_image_pixels=1000)
    img = decode_image(jpeg(10, 12, mode="L"))
    assert img.shape == (10, 12, 3) and img.dtype == np.uint8


def test_sample_with_error_keeps_its_key():
    model = model_skeleton("sam_tiny")
    row = prepare_sample(Sample(key="k", source_uri="u#k", error="boom"), "s", model, 10, False)
    assert (row["status"], row["error"], row["key"], row["is_end"]) == ("error", "boom", "k", False)


def test_one_shard_range_rule_for_running_and_reading_back(tmp_path):
    """`sa_9..sa_10` is empty in string order ("sa_9" > "sa_10") but holds both shards in
    natural order: running (list_shards) and reading back (dataset_files) agree."""
    import io
    import tarfile

    from operators.dataset.maskset import dataset_files
    from operators.shards.listing import select_shards
    from operators.shards.write import commit_shard

    names = ["sa_10", "sa_2", "sa_9", "sa_11"]
    assert select_shards(names, "sa_9..sa_10") == ["sa_9", "sa_10"]
    assert select_shards(names) == ["sa_2", "sa_9", "sa_10", "sa_11"]
    assert select_shards(names, "sa_2..sa_10", limit=2) == ["sa_2", "sa_9"]
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    for name in names:
        with tarfile.open(corpus / f"{name}.tar", "w") as tar:
            info = tarfile.TarInfo("a.txt")
            tar.addfile(info, io.BytesIO(b""))
        (out / name).mkdir(parents=True)
        (out / name / "part.parquet").write_bytes(b"")
        commit_shard(str(out), name, {"shard": name, "images": 0,
                                      "parts": {"part.parquet": {"rows": 0, "bytes": 0}}})
    running = [s.name for s in list_shards([str(corpus)], "sa_9..sa_10")]
    reading = [p.split("/")[-2] for p in dataset_files(str(out), shards="sa_9..sa_10")]
    assert running == reading == ["sa_9", "sa_10"]


def test_the_pixel_limit_is_the_setting_not_pillows():
    from PIL import Image

    side = 9800  # 96 Mpx: over Pillow's own 89.5 Mpx warning
    img = decode_image(bomb_png(side), max_image_pixels=500_000_000)
    assert img.shape == (side, side, 3)
    assert Image.MAX_IMAGE_PIXELS is None  # samdata checks the header itself
    with pytest.raises(DecodeError, match="over max_image_pixels=90000000"):
        decode_image(bomb_png(side), max_image_pixels=90_000_000)


def test_wide_and_float_pixels_scale_to_8_bits_as_a_viewer_shows_them():
    import io

    from PIL import Image

    def encoded(array, mode=None, fmt="PNG"):
        buf = io.BytesIO()
        Image.fromarray(array, mode=mode).save(buf, fmt)
        return buf.getvalue()

    wide = np.array([[0, 257, 65535, 32896]], np.uint16)
    assert decode_image(encoded(wide))[0, :, 0].tolist() == [0, 1, 255, 128]
    ramp = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert decode_image(encoded(ramp, "F", "TIFF"))[0, :, 1].tolist() == [0, 128, 255]
    with pytest.raises(DecodeError, match=r"mode F\) with values in -1..1"):
        decode_image(encoded(ramp * 2 - 1, "F", "TIFF"))
    with pytest.raises(DecodeError, match="truncated JPEG"):
        decode_image(jpeg(300, 400)[:2000])
