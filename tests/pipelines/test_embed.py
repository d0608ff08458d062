"""The embedding pipeline end to end on a real Ray, the S3 test server and plain pyarrow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from models import Predictor, build_model
from operators.shards.decode import decode_image
from operators.shards.sample import write_sample_corpus
from pipelines.config import ConfigError, parse_config
from pipelines.embed import run_embed
from tests.bad_corpus import EXPECTED_BAD, write_bad_corpus


def _cfg(inp, out, **extra):
    # fp32: the outputs are compared with a direct fp32 call (auto would be bf16 on a GPU)
    data = {"input": {"urls": [inp]}, "output": {"path": out},
            "model": {"name": "sam_tiny", "precision": "fp32"}, "compute": {"ray_batch_size": 4}}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def test_s3_shards_to_s3_parquet_equal_a_direct_model_call(ray_local, s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    write_sample_corpus(f"s3://{bucket}/corpus", shards=2, images_per_shard=3, seed=1,
                        storage_options=opts)
    cfg = _cfg(f"s3://{bucket}/corpus/", f"s3://{bucket}/emb",
               storage={"endpoint_url": s3_endpoint}, output={"include_image": True})
    summary = run_embed(cfg)
    assert (summary.images_ok, summary.images_failed, summary.shards_done) == (6, 0, 2)
    assert summary.random_weights and "RANDOM WEIGHTS" in summary.text()

    # Read back with plain pyarrow + s3fs: no Ray, no samdata reader
    table = pads.dataset(f"{bucket}/emb", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 6
    assert sorted(table.column("shard").to_pylist()) == ["sa_000000"] * 3 + ["sa_000001"] * 3
    emb = table.column("embedding").combine_chunks().to_numpy_ndarray()
    assert emb.shape == (6, 32, 8, 8) and emb.dtype == np.float16
    assert fs.exists(f"{bucket}/emb.samdata/commits/sa_000000.json")

    # The same image through the model directly, same preprocessing
    model = build_model("sam_tiny", seed=0)
    row = table.slice(0, 1).to_pylist()[0]
    tar_key = row["key"]
    import tarfile

    with fs.open(f"{bucket}/corpus/{row['shard']}.tar", "rb") as f:
        with tarfile.open(fileobj=f) as tar:
            image = decode_image(tar.extractfile(f"{tar_key}.jpg").read())
    direct = Predictor(model).embed([image])[0].numpy()
    got = emb[0].astype(np.float32)
    np.testing.assert_allclose(got, direct, rtol=2e-3, atol=2e-3)
    assert list(row["orig_hw"]) == list(image.shape[:2])
    assert list(row["input_hw"]) == list(model.input_hw(image.shape[:2]))
    assert row["status"] == "ok" and row["error"] is None and row["model"] == "sam_tiny"
    assert row["image_id"] is not None
    # the stored JPEG is the resized input the encoder saw
    import io

    from PIL import Image

    stored = np.asarray(Image.open(io.BytesIO(row["image_jpeg"])))
    assert stored.shape[:2] == tuple(row["input_hw"])


def test_bad_inputs_every_image_accounted_for(ray_local, tmp_path):
    counts = write_bad_corpus(tmp_path / "in")
    cfg = _cfg(str(tmp_path / "in"), str(tmp_path / "out"),
               input={"max_image_pixels": 2_000_000}, output={"dtype": "float32"})
    summary = run_embed(cfg)
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == sum(counts.values())  # rows = images found
    rows = {r["key"]: r for r in table.to_pylist()}
    for key, expected in EXPECTED_BAD.items():
        if expected == "ok":
            assert rows[key]["status"] == "ok", rows[key]["error"]
            assert rows[key]["embedding"] is not None
        else:
            assert rows[key]["status"] == "error" and expected in rows[key]["error"]
            assert rows[key]["embedding"] is None
    assert summary.images_ok + summary.images_failed == table.num_rows
    assert [s["shard"] for s in summary.shards_with_errors] == ["sa_000001"]
    stats = json.loads((tmp_path / "out.samdata" / "commits" / "sa_000001.json").read_text())
    assert "unreadable" in stats["shard_error"] and stats["images"] == 3
    emb = table.column("embedding").combine_chunks()
    assert emb.type.value_type == "float" and emb.null_count == summary.images_failed


def test_rerun_skips_committed_shards_and_never_duplicates(ray_local, tmp_path):
    write_sample_corpus(str(tmp_path / "in"), shards=2, images_per_shard=2)
    cfg = _cfg(str(tmp_path / "in"), str(tmp_path / "out"))
    first = run_embed(cfg)
    assert first.shards_done == 2
    # a partial shard left by a crash: no marker, and a stray file with another shard's rows
    # -> the stray is removed, the shard's own complete parts are kept
    (tmp_path / "out.samdata" / "commits" / "sa_000001.json").unlink()
    (tmp_path / "out" / "sa_000001" / "sa_000001-stray.parquet").write_bytes(
        (tmp_path / "out" / "sa_000000").glob("*.parquet").__next__().read_bytes())
    second = run_embed(cfg)
    assert (second.shards_skipped, second.shards_done) == (1, 1)
    assert (second.images_resumed, second.images_processed) == (2, 0)
    assert not (tmp_path / "out" / "sa_000001" / "sa_000001-stray.parquet").exists()
    keys = pq.read_table(tmp_path / "out").column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 4


def test_interrupted_run_resumes_exactly_once(ray_local, tmp_path):
    """Kill a real `samdata embed` process after its first shard commits, then rerun."""
    shards, per_shard = 8, 4
    write_sample_corpus(str(tmp_path / "in"), shards=shards, images_per_shard=per_shard,
                        min_side=200, max_side=400)
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(json.dumps({
        "input": {"urls": [str(tmp_path / "in")]}, "output": {"path": str(tmp_path / "out")},
        "model": {"name": "sam_tiny"}, "compute": {"ray_batch_size": 1},
        "ray": {"num_cpus": 2},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "embed", "--config", str(cfg_path)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if list((tmp_path / "out.samdata" / "commits").glob("*.json")):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = len(list((tmp_path / "out.samdata" / "commits").glob("*.json")))
    assert 1 <= committed < shards, f"kill came too late or never: {committed} committed"

    summary = run_embed(parse_config(json.loads(cfg_path.read_text())))
    assert summary.shards_skipped == committed
    assert summary.shards_done == shards - committed
    table = pq.read_table(tmp_path / "out")
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == shards * per_shard
    assert len(list((tmp_path / "out.samdata" / "commits").glob("*.json"))) == shards


def test_bad_config_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config({"input": {"urls": []}, "output": {"path": str(tmp_path)},
                      "model": {"name": "sam_vit_q", "batch_size": 0},
                      "compute": {"gpus_per_actor": "many"}})
    msg = str(e.value)
    assert "input.urls" in msg and "model.name" in msg and "sam_vit_h" in msg
    assert "model.batch_size" in msg and "compute.gpus_per_actor" in msg
    assert not any(tmp_path.iterdir())


def test_cli_refuses_bad_config_with_exit_2(tmp_path, capsys):
    from pipelines.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("input: {urls: [x]}\noutput: {path: y}\nmodel: {precision: fp64}\n")
    assert main(["embed", "--config", str(cfg)]) == 2
    assert "model.precision" in capsys.readouterr().err


