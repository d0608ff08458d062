"""Storage faults never lose an image: a fault-injecting proxy between s3fs and the S3 test
server breaks the reads of one shard (resets mid-body, 503 SlowDown for a while or for good,
403 once, a stalled body). After the first run and at most one rerun, every image of the
corpus is exactly one row; unfinished shards are named first and make the run incomplete."""

from __future__ import annotations

import collections
import dataclasses

import pyarrow.dataset as pads
import pytest

from operators.shards.sample import write_sample_corpus
from pipelines.config import EmbedConfig, parse_config
from pipelines.embed import run_embed
from tests.s3_proxy import Fault, FaultProxy

SHARDS, IMAGES = 3, 4
# input.images_per_task: 2 cuts each shard into two pieces read by two tasks (a fault then hits
# one piece of a shard, or its header pass); 256 reads each shard in one task
PER_TASK = pytest.mark.parametrize("per_task", [2, 256], ids=["pieces", "one-task"])
# Short retries so that a fault that outlasts them does so in about a second
RETRIES = {"request_attempts": 1, "read_retries": 4, "retry_backoff_s": 0.1,
           "retry_backoff_max_s": 0.4, "read_timeout_s": 1.0, "block_size": 1 << 16}


@pytest.fixture()
def proxy(s3_endpoint):
    p = FaultProxy(s3_endpoint)
    yield p
    p.stop()


@pytest.fixture()
def corpus(s3_bucket, s3_endpoint):
    """3 SA-1B shards of 4 images (~170 KB each: 3 ranged GETs of 64 KiB)."""
    fs, bucket = s3_bucket
    write_sample_corpus(f"s3://{bucket}/corpus", shards=SHARDS, images_per_shard=IMAGES,
                        seed=7, storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}},
                        min_side=400, max_side=500)
    return fs, bucket


def _run(bucket: str, proxy: FaultProxy, per_task: int):
    cfg = parse_config({
        "input": {"urls": [f"s3://{bucket}/corpus/"], "images_per_task": per_task},
        "output": {"path": f"s3://{bucket}/emb"},
        "model": {"name": "sam_tiny"}, "compute": {"ray_batch_size": 2},
        "storage": {"endpoint_url": proxy.url, **RETRIES}}, EmbedConfig)
    return run_embed(cfg)


def _fresh(fault: Fault) -> Fault:
    """The parametrized fault with its counters at zero (one Fault serves several tests)."""
    return dataclasses.replace(fault, seen=0, hits=0, first_hit=None)


def _rows(fs, bucket: str) -> collections.Counter:
    """How many rows each key has in the output (all part files: uncommitted ones too)."""
    fs.invalidate_cache()  # the job wrote through other clients
    table = pads.dataset(f"{bucket}/emb", filesystem=fs, format="parquet").to_table(
        columns=["key", "status"])
    assert set(table.column("status").to_pylist()) == {"ok"}
    return collections.Counter(table.column("key").to_pylist())


def _every_image_once(fs, bucket: str) -> None:
    rows = _rows(fs, bucket)
    assert len(rows) == SHARDS * IMAGES and set(rows.values()) == {1}, rows


@pytest.mark.parametrize("fault", [
    Fault("sa_000001", "reset", after_bytes=1000, times=7),  # beyond s3fs's own 5 re-fetches
    Fault("sa_000001", "slowdown", times=None, seconds=1.5),  # a burst that ends
    Fault("sa_000000", "stall", after_bytes=1000, seconds=3, times=1),  # read timeout
    Fault("emb/sa_000002/", "slowdown", method="PUT", times=3),  # writes throttled a while
], ids=["resets", "slowdown-burst", "stalled-body", "write-slowdown"])
@PER_TASK
def test_transient_faults_are_absorbed_in_the_first_run(ray_local, proxy, corpus, fault,
                                                        per_task):
    fs, bucket = corpus
    fault = _fresh(fault)
    proxy.add(fault)
    summary = _run(bucket, proxy, per_task)
    assert fault.hits > 0, "the fault never fired"
    assert summary.complete and summary.shards_done == SHARDS, summary.text()
    assert summary.images_ok == SHARDS * IMAGES
    _every_image_once(fs, bucket)


@pytest.mark.parametrize("fault", [
    Fault("sa_000001", "slowdown", times=None),  # throttled past every retry
    Fault("sa_000001", "forbidden", times=1),  # 403 once (credentials expired, a policy)
    Fault("sa_000002", "slowdown", times=None, after_gets=1),  # its second GET, for good
    Fault("emb/sa_000001/", "forbidden", method="PUT", times=None),  # writes refused
], ids=["slowdown-for-good", "forbidden-once", "second-get-fails", "writes-refused"])
@PER_TASK
def test_a_shard_that_cannot_be_read_is_left_for_the_rerun(ray_local, proxy, corpus, fault,
                                                           per_task):
    fs, bucket = corpus
    fault = _fresh(fault)
    proxy.add(fault)
    first = _run(bucket, proxy, per_task)
    shard = fault.key.removeprefix("emb/").strip("/")
    # The others finish; the broken one is named first and not committed
    assert not first.complete and first.shards_done == SHARDS - 1, first.text()
    assert [u["shard"] for u in first.shards_unfinished] == [shard]
    assert first.text().splitlines()[1].startswith(f"  unfinished {shard}: ")
    assert not fs.exists(f"{bucket}/emb.samdata/commits/{shard}.json")
    kept = sum(n for k, n in _rows(fs, bucket).items())  # parts of the broken shard included
    # The rerun, storage healthy again, redoes exactly that shard's missing images
    proxy.clear()
    second = _run(bucket, proxy, per_task)
    assert second.complete and second.shards_done == 1 and second.shards_skipped == SHARDS - 1
    assert second.images_processed == SHARDS * IMAGES - kept
    assert second.images_resumed == kept - (SHARDS - 1) * IMAGES
    _every_image_once(fs, bucket)
    if fault.after_gets and per_task >= IMAGES:  # one task read the shard and broke after
        assert 0 < second.images_resumed < IMAGES  # its first GET: its first images were kept


@pytest.mark.slow  # a real driver SIGKILLed mid-shard, then rerun: about 2 minutes on 2 cores
@pytest.mark.parametrize("per_task", [256, 2], ids=["one-task", "pieces"])
def test_a_killed_job_resumes_inside_its_shard(tmp_path, per_task):
    """SIGKILL the driver (and its local Ray) once half of a shard's images are written; the
    rerun keeps those part files, processes only the rest (with pieces: each piece skips its
    own kept keys), and the output has every image exactly once."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import yaml

    from tests.ray_head import _session_pids

    images = 8
    write_sample_corpus(str(tmp_path / "corpus"), shards=1, images_per_shard=images, seed=3)
    cfg = tmp_path / "embed.yaml"
    out = tmp_path / "emb"
    # mobile_sam at 1024 px takes about a second an image on a CPU: slow enough to stop midway
    cfg.write_text(yaml.safe_dump({
        "input": {"urls": [str(tmp_path / "corpus")], "images_per_task": per_task},
        "output": {"path": str(out)},
        "model": {"name": "mobile_sam", "batch_size": 1}, "compute": {"ray_batch_size": 1},
        "ray": {"num_cpus": 2}}))
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rk-", dir="/tmp"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "pipelines.cli", "embed", "--config", str(cfg)]

    def written() -> int:
        return len(list(out.glob("sa_000000/*.parquet")))

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while written() < images // 2 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the job ended before it could be stopped midway"
        for pid in _session_pids(first.pid):
            os.kill(pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        for pid in _session_pids(first.pid):
            os.kill(pid, signal.SIGKILL)
    kept = written()
    assert images // 2 <= kept < images
    assert not (tmp_path / "emb.samdata" / "commits" / "sa_000000.json").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["images_resumed"] == kept
    assert summary["images_processed"] == images - kept  # only the rest was processed
    table = pads.dataset(str(out), format="parquet").to_table(columns=["key"])
    keys = collections.Counter(table.column("key").to_pylist())
    assert len(keys) == images and set(keys.values()) == {1}
