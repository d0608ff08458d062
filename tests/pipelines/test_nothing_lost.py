"""Unusual but legal corpora lose no row: each test builds its input with `tarfile` and
Pillow, runs a real job on the shared Ray, and counts rows per key after the run and after a
rerun (lost 0, duplicated 0, committed shards complete)."""

from __future__ import annotations

import collections
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from operators.shards.layout import commit_marker, meta_root
from operators.shards.lease import LEASE_FILE, Lease, OutputBusy
from operators.shards.write import verify_shard
from pipelines.autolabel import run_autolabel
from pipelines.config import AutolabelConfig, parse_config
from pipelines.embed import run_embed
from tests.bad_corpus import jpeg
from tests.bad_corpus import member as _member
from tests.bad_corpus import write_members as _tar


def _embed_cfg(inp, out, **extra):
    data = {"input": {"urls": [str(inp)]}, "output": {"path": str(out)},
            "model": {"name": "sam_tiny", "precision": "fp32"},
            "compute": {"ray_batch_size": 4}}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def _rows(out: Path) -> collections.Counter:
    keys = pq.read_table(out, columns=["key"]).column("key").to_pylist()
    return collections.Counter(keys)


def _stats(out: Path, shard: str) -> dict:
    return json.loads(Path(commit_marker(str(out), shard)).read_text())


def _run_twice(cfg, run=run_embed):
    first = run(cfg)
    second = run(cfg)
    assert second.shards_skipped == second.shards_total and second.images_processed == 0
    return first


def test_keys_sharing_a_long_prefix_each_keep_their_row(ray_local, tmp_path):
    prefix = "deep/" + "folder_" * 17 + "x"  # 125 characters
    assert len(prefix) == 125
    keys = [f"{prefix}{i:03d}" for i in range(40)]
    _tar(tmp_path / "in" / "long.tar", [_member(f"{k}.jpg", jpeg(24, 32, seed=i))
                                         for i, k in enumerate(keys)])
    out = tmp_path / "out"
    summary = _run_twice(_embed_cfg(tmp_path / "in", out, compute={"ray_batch_size": 2}))
    assert summary.images_ok == 40 and summary.complete
    rows = _rows(out)
    assert sorted(rows) == sorted(keys) and set(rows.values()) == {1}
    stats = _stats(out, "long")
    assert stats["images"] == 40 and len(stats["parts"]) == 20
    assert sum(p["rows"] for p in stats["parts"].values()) == 40
    assert verify_shard(str(out), "long", deep=True) == []


def test_a_key_twice_in_a_tar_keeps_both_rows(ray_local, tmp_path):
    names = ["a", "b", "c", "a", "d", "e", "f", "g"]  # "a" again, not next to the first
    members = [_member(f"{k}.jpg", jpeg(20, 20, seed=i)) for i, k in enumerate(names)]
    members.insert(1, _member("a.jpg", jpeg(20, 20, seed=99)))  # and right after itself
    _tar(tmp_path / "in" / "dup.tar", members)
    out = tmp_path / "out"
    summary = _run_twice(_embed_cfg(tmp_path / "in", out, compute={"ray_batch_size": 1}))
    rows = _rows(out)
    assert sorted(rows) == ["a", "a~2", "a~3", "b", "c", "d", "e", "f", "g"]
    assert set(rows.values()) == {1} and summary.images_ok == 9
    stats = _stats(out, "dup")
    assert stats["images"] == 9 and stats["members"] == {"duplicate_key": 2}


def test_a_name_that_is_not_utf8_is_an_error_row_and_the_job_goes_on(ray_local, tmp_path):
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # latin-1 bytes in the tar header
    for i in range(4):
        members = [_member(f"s{i}_{k}.jpg", jpeg(20, 20, seed=k)) for k in range(2)]
        if i == 1:
            members.append(_member(f"{bad}.jpg", jpeg(20, 20)))
        _tar(tmp_path / "in" / f"shard{i}.tar", members, encoding="latin-1")
    out = tmp_path / "out"
    summary = _run_twice(_embed_cfg(tmp_path / "in", out))
    assert summary.shards_done == 4 and summary.complete
    table = pq.read_table(out).to_pylist()
    assert len(table) == 9 and len({r["key"] for r in table}) == 9
    row = next(r for r in table if r["status"] == "error")
    assert row["key"] == "caf\\xe9" and "not UTF-8" in row["error"]
    assert _stats(out, "shard1")["members"] == {"non_utf8_name": 1}


def test_links_and_special_members_are_counted_by_kind(ray_local, tmp_path):
    image = jpeg(24, 24, seed=3)
    _tar(tmp_path / "in" / "links.tar", [
        _member("x.jpg", image),
        _member("y.jpg", kind=tarfile.LNKTYPE, linkname="x.jpg"),  # read as x.jpg
        _member("z.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
        _member("w.jpg", kind=tarfile.LNKTYPE, linkname="nowhere.jpg"),
        _member("pipe", kind=tarfile.FIFOTYPE),
        _member("dev", kind=tarfile.CHRTYPE),
        _member("sub", kind=tarfile.DIRTYPE),
        _member("readme.txt", b"hello"),
    ])
    out = tmp_path / "out"
    _run_twice(_embed_cfg(tmp_path / "in", out))
    rows = {r["key"]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == ["x", "y"] and rows["y"]["status"] == "ok"
    emb = {k: np.asarray(r["embedding"]) for k, r in rows.items()}
    np.testing.assert_array_equal(emb["x"], emb["y"])  # the link's row is its target's
    stats = _stats(out, "links")
    assert stats["members"] == {"hardlink": 1, "symlink": 1, "dangling_hardlink": 1,
                                "fifo": 1, "device": 1, "directory": 1, "not_a_sample": 1}
    assert stats["skipped_members"] == 6 and stats["images"] == 2


def _png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, fmt)
    return buf.getvalue()


def _gif() -> bytes:
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (40, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def _lying_jpeg() -> bytes:
    """A JPEG whose header says 8000x11000, with 3 KB of data."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((11000, 8000, 3), np.uint8)).save(buf, "JPEG", quality=10)
    return buf.getvalue()[:3000]


def test_image_kinds_each_become_a_row(ray_local, tmp_path):
    wide = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)  # up to 61380
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    _tar(tmp_path / "in" / "kinds.tar", [
        _member("anim.gif", _gif()),
        _member("deep.png", _png(wide)),
        _member("float.tif", _png(ramp, "F", "TIFF")),
        _member("hot.tif", _png(ramp * 7, "F", "TIFF")),
        _member("cut.jpg", _lying_jpeg()),
    ])
    out = tmp_path / "out"
    summary = _run_twice(_embed_cfg(tmp_path / "in", out, output={"include_image": True}))
    rows = {r["key"]: r for r in pq.read_table(out).to_pylist()}
    assert sorted(rows) == ["anim", "cut", "deep", "float", "hot"]
    assert summary.images_ok == 3 and summary.images_failed == 2
    assert rows["anim"]["status"] == "ok" and list(rows["anim"]["orig_hw"]) == [16, 16]
    assert "values in 0..7" in rows["hot"]["error"]
    assert "truncated JPEG" in rows["cut"]["error"]
    # the stored input is the 8-bit image a viewer shows (1/257 of the 16-bit values, not
    # values clipped at 255)
    deep = np.asarray(Image.open(io.BytesIO(rows["deep"]["image_jpeg"])))
    assert abs(deep.mean() - (wide / 257).mean()) < 3


def test_exports_never_leave_their_folder(ray_local, tmp_path):
    from operators.dataset.export import export_sa1b

    _tar(tmp_path / "in" / "esc.tar", [
        _member("../../outside.jpg", jpeg(24, 24, seed=1)),
        _member("/abs/path.jpg", jpeg(24, 24, seed=2)),
        _member("fine.jpg", jpeg(24, 24, seed=3)),
    ])
    labels = tmp_path / "labels"
    cfg = parse_config({"input": {"urls": [str(tmp_path / "in")]}, "output": {"path": str(labels)},
                        "model": {"name": "sam_tiny"}, "generator": {"points_per_side": 2}},
                       AutolabelConfig)
    assert _run_twice(cfg, run_autolabel).images_ok == 3
    out = tmp_path / "export" / "here"
    summary = export_sa1b(str(labels), str(out))
    assert summary["images"] == 3
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.json"))
    assert written == ["esc/__/__/outside.json", "esc/abs/path.json", "esc/fine.json"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["here"]
    assert not (tmp_path / "outside.json").exists()


def test_a_part_lost_after_the_commit_is_redone(ray_local, tmp_path):
    from operators.shards.sample import write_sample_corpus

    write_sample_corpus(str(tmp_path / "in"), shards=2, images_per_shard=4)
    out = tmp_path / "out"
    cfg = _embed_cfg(tmp_path / "in", out, compute={"ray_batch_size": 2})
    run_embed(cfg)
    parts = sorted((out / "sa_000001").glob("*.parquet"))
    assert len(parts) == 2 and verify_shard(str(out), "sa_000001") == []
    parts[0].unlink()
    problems = verify_shard(str(out), "sa_000001")
    assert len(problems) == 1 and parts[0].name in problems[0]
    again = run_embed(cfg)
    assert (again.shards_skipped, again.shards_done) == (1, 1)
    assert again.images_processed == 2 and again.images_resumed == 2
    rows = _rows(out)
    assert len(rows) == 8 and set(rows.values()) == {1}
    assert verify_shard(str(out), "sa_000001", deep=True) == []


def test_a_second_run_on_a_held_output_is_refused_at_once(ray_local, tmp_path, capsys):
    from operators.shards.sample import write_sample_corpus
    from pipelines.cli import main

    write_sample_corpus(str(tmp_path / "in"), shards=1, images_per_shard=2)
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({"input": {"urls": [str(tmp_path / "in")]},
                                  "output": {"path": str(out)}, "model": {"name": "sam_tiny"}}))
    with Lease(str(out), "embed"):  # a live run of this host holds the output
        start = time.perf_counter()
        code = main(["embed", "--config", str(config)])
        took = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and took < 10, (code, took)
    assert len(err) == 1 and "in use by another run" in err[0] and "embed" in err[0]
    assert not list(out.glob("*/*.parquet"))  # it did no work
    lease = Path(meta_root(str(out))) / LEASE_FILE
    assert not lease.exists()  # the holder released it
    # a lease left by a dead process of this host is taken over
    lease.write_text(json.dumps({"owner": "gone", "host": __import__(
        "socket").gethostname(), "pid": 2**22 + 7, "job": "embed", "expires_at": 1e12}))
    assert run_embed(_embed_cfg(tmp_path / "in", out)).shards_done == 1


def test_the_lease_holds_on_s3(s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    root = f"s3://{bucket}/out"
    with Lease(root, "autolabel", opts, confirm_s=0.1):
        with pytest.raises(OutputBusy, match="samdata autolabel"):
            Lease(root, "embed", opts, confirm_s=0.1).acquire()
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/out.samdata/{LEASE_FILE}")
    # another host's lease counts until it expires
    record = {"owner": "x", "host": "elsewhere", "pid": 1, "job": "embed"}
    fs.pipe_file(f"{bucket}/out.samdata/{LEASE_FILE}",
                 json.dumps({**record, "expires_at": time.time() + 60}).encode())
    with pytest.raises(OutputBusy, match="host elsewhere"):
        Lease(root, "embed", opts, confirm_s=0.1).acquire()
    fs.pipe_file(f"{bucket}/out.samdata/{LEASE_FILE}",
                 json.dumps({**record, "expires_at": time.time() - 1}).encode())
    with Lease(root, "embed", opts, confirm_s=0.1):
        pass
