"""Host memory of the embedding job as the corpus grows: peak RSS at N and 4N shards.

    python bench/memory.py --model sam_tiny --shards 10 40 --images-per-shard 8

Runs `samdata embed` (local Ray, started once beforehand) on sample corpora of each size and
samples, every 0.2 s, the summed resident memory (VmRSS) of the driver and every Ray process
(`ray::*` workers and actors, raylet, GCS). Prints JSON: per size the peak summed RSS, the peak
of the driver alone, and the ratio of the largest to the smallest (flat = close to 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from operators.shards.sample import write_sample_corpus  # noqa: E402

RAY_NAMES = ("ray::", "raylet", "gcs_server", "plasma")


def _rss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample_rss() -> tuple[int, int]:
    """(summed RSS of the driver and the Ray processes, RSS of the driver), KiB."""
    total = 0
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if entry.name == me or any(n in cmd for n in RAY_NAMES):
            total += _rss_kib(entry.name)
    return total, _rss_kib(me)


class Peak(threading.Thread):
    """Samples RSS in the background until stopped; keeps the peaks."""

    def __init__(self, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period_s, self.total, self.driver = period_s, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, driver = sample_rss()
            self.total, self.driver = max(self.total, total), max(self.driver, driver)
            time.sleep(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam_tiny")
    ap.add_argument("--shards", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--images-per-shard", type=int, default=8)
    args = ap.parse_args()
    from pipelines.config import parse_config  # Ray only here: Peak is used without it
    from pipelines.embed import run_embed
    from pipelines.ray_env import init_ray

    init_ray(None, num_cpus=os.cpu_count())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.shards:
            corpus = os.path.join(tmp, f"corpus{n}")
            write_sample_corpus(corpus, shards=n, images_per_shard=args.images_per_shard,
                                seed=n, min_side=480, max_side=800)
            cfg = parse_config({"input": {"urls": [corpus]},
                                "output": {"path": os.path.join(tmp, f"emb{n}")},
                                "model": {"name": args.model}})
            peak = Peak()
            peak.start()
            summary = run_embed(cfg)
            peak.stop()
            results.append({"shards": n, "images": summary.images_ok,
                            "seconds": round(summary.seconds, 1),
                            "peak_rss_mib": round(peak.total / 1024),
                            "peak_driver_rss_mib": round(peak.driver / 1024)})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "bench": "memory", "model": args.model, "runs": results,
        "peak_rss_ratio_largest_to_smallest": round(
            results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
