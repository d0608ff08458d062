"""The driver's own cost per shard (issue 28): peak RSS and control-plane seconds per shard of
`samdata embed` over 10, 100 and 1001 shards on an S3 server (moto, in its own process).

    python bench/control_plane.py --shards 10 100 1001

Each shard holds two tiny images, so the data plane is small and what grows with the shard
count shows: listing (ListObjectsV2 pages of 1000), resume (committed markers and kept parts,
one listing of the output plus one look per shard to do), planning (one Ray task per shard:
its size, and its header pass when it holds more than input.images_per_task samples) and
commits (one listing and one PUT of the marker per shard). Also times the header pass of one
tar of --header-pass-members members walked in one region and in 16 (index.scan_tar), with
S3's latency added to local reads. The job's summary times these
phases (`control_seconds`); the driver's VmRSS is sampled every 0.1 s. A second run over the
finished output (everything skipped) is timed too. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.memory import Peak  # noqa: E402

S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process (its memory and CPU are not the driver's)."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"expected moto_server on {url}, got no answer in 10 s")


LATENCY_S = 0.015  # a ranged GET's first byte on S3 in-region, typically 10-20 ms


def time_header_pass(members: int) -> dict:
    """Seconds of the header pass (index.scan_tar) over one tar of `members` members of
    64 KiB, its bytes local but every ranged read delayed LATENCY_S as S3's are (moto's
    single server process measures its own CPU, not a store's latency), walked in one region
    and in 16."""
    import io
    import tarfile

    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    from operators.shards.index import scan_tar

    class SlowLocal(LocalFileSystem):
        protocol = ("slowfile",)

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(str(path).replace("slowfile://", ""))

        def cat_file(self, path, start=None, end=None, **kwargs):
            time.sleep(LATENCY_S)
            return super().cat_file(path, start=start, end=end, **kwargs)

    fsspec.register_implementation("slowfile", SlowLocal, clobber=True)
    path = Path(tempfile.mkdtemp(prefix="hp-")) / "sa_000000.tar"
    with tarfile.open(path, mode="w") as tar:
        for i in range(members):
            info = tarfile.TarInfo(f"sa_{i}.jpg")
            info.size = 64 * 1024
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    out = {"members": members, "tar_mib": round(path.stat().st_size / 2**20),
           "latency_ms_per_get": 1000 * LATENCY_S}
    for regions in (1, 16):
        start = time.perf_counter()
        index = scan_tar(f"slowfile://{path}", regions=regions)
        assert len(index.members) == members and index.error is None
        out[f"seconds_{regions}_region{'s' if regions > 1 else ''}"] = round(
            time.perf_counter() - start, 2)
    path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, nargs="*", default=[10, 100, 1001],
                    help="shard counts to run (none: only the header pass)")
    ap.add_argument("--images-per-shard", type=int, default=2)
    ap.add_argument("--header-pass-members", type=int, default=2000,
                    help="members of the tar whose header pass is timed (64 KiB each)")
    args = ap.parse_args()
    os.environ.update(S3_ENV)
    import s3fs

    from operators.shards.sample import write_sample_corpus
    from pipelines.config import parse_config
    from pipelines.embed import run_embed
    from pipelines.ray_env import init_ray

    moto, endpoint = start_moto()
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bench-control")
        init_ray(None, num_cpus=os.cpu_count(), temp_dir=tempfile.mkdtemp(prefix="cp-",
                                                                           dir="/tmp"))
        header_pass = time_header_pass(args.header_pass_members)
        print(json.dumps(header_pass), file=sys.stderr, flush=True)
        results = []
        for n in args.shards:
            corpus = f"s3://bench-control/corpus{n}"
            write_sample_corpus(corpus, shards=n, images_per_shard=args.images_per_shard,
                                seed=n, min_side=24, max_side=32,
                                storage_options={"client_kwargs": {"endpoint_url": endpoint}})
            cfg = parse_config({"input": {"urls": [corpus + "/"]},
                                "output": {"path": f"s3://bench-control/emb{n}"},
                                "model": {"name": "sam_tiny"},
                                "compute": {"ray_batch_size": 64},
                                "storage": {"endpoint_url": endpoint}})
            peak = Peak(period_s=0.1)
            peak.start()
            summary = run_embed(cfg)
            peak.stop()
            assert summary.complete and summary.shards_done == n, summary.text()
            rerun = run_embed(cfg)
            assert rerun.shards_skipped == n
            control = summary.control_seconds
            results.append({
                "shards": n, "images": summary.images_ok, "seconds": round(summary.seconds, 1),
                "control_seconds": {k: round(v, 2) for k, v in control.items()},
                "control_ms_per_shard": {k: round(1000 * v / n, 2) for k, v in control.items()},
                "control_share_of_wall": round(sum(control.values()) / summary.seconds, 3),
                "peak_driver_rss_mib": round(peak.driver / 1024),
                "rerun_seconds": round(rerun.seconds, 2),
                "rerun_ms_per_shard": round(1000 * rerun.seconds / n, 2),
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        moto.kill()
        moto.wait()
    print(json.dumps({
        "bench": "control_plane", "store": "moto S3 server on loopback", "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "images_per_shard": args.images_per_shard, "header_pass": header_pass,
        "runs": results,
        "peak_driver_rss_ratio_largest_to_smallest": round(
            results[-1]["peak_driver_rss_mib"] / results[0]["peak_driver_rss_mib"], 3)
        if results else None,
    }, indent=1))


if __name__ == "__main__":
    main()
