"""Training throughput of `samdata distill` stage 1, and the share of step time the trainer waits
for data (the goal: under 10%), on this machine's device.

    python bench/distill.py                       # CPU: sam_tiny -> mobile_sam_tiny
    python bench/distill.py --teacher sam_vit_h --student mobile_sam --shards 8 \\
        --images-per-shard 64 --min-side 768 --max-side 1500 --batch-size 16 --steps 300 \\
        --log-every 20 --cpus 16       # on a GPU machine: one worker with the GPU, bf16

A sample corpus is written, embedded by the teacher (random weights: the speed is the same) with
the images stored (`output.include_image`), then the student trains on it with one TorchTrainer
worker; Ray is started once beforehand. Prints one JSON object: images/s and the data-wait
share over the whole run and in the steady state (without the first log window, which holds
the start of the Ray Data pipeline), seconds per step, the device and the settings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from operators.shards.sample import write_sample_corpus  # noqa: E402
from pipelines.config import DistillConfig, EmbedConfig, parse_config  # noqa: E402
from pipelines.distill import run_distill  # noqa: E402
from pipelines.embed import run_embed  # noqa: E402
from pipelines.ray_env import init_ray  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="sam_tiny")
    ap.add_argument("--student", default="mobile_sam_tiny")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--images-per-shard", type=int, default=32)
    ap.add_argument("--min-side", type=int, default=48)
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--work", default=None, help="folder for the corpus (default: a temp dir)")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-distill-"))
    init_ray(None, args.cpus)
    write_sample_corpus(str(work / "corpus"), shards=args.shards,
                        images_per_shard=args.images_per_shard, seed=0,
                        min_side=args.min_side, max_side=args.max_side)
    start = time.perf_counter()
    run_embed(parse_config({
        "input": {"urls": [str(work / "corpus")]},
        "output": {"path": str(work / "emb"), "include_image": True},
        "model": {"name": args.teacher, "batch_size": "auto"},
    }, EmbedConfig))
    embed_s = time.perf_counter() - start
    cfg = parse_config({
        "stage": 1,
        "data": {"embeddings": str(work / "emb"), "val_shards": 0},
        "student": {"name": args.student},
        "stage1": {"batch_size": args.batch_size, "steps": args.steps, "lr": 1e-3,
                   "warmup_epochs": 0.5, "precision": args.precision},
        "compute": {"log_every": args.log_every},
        "output": {"path": str(work / "runs"), "name": "bench",
                   "checkpoint_every": args.steps},
    }, DistillConfig)
    s = run_distill(cfg)
    print(json.dumps({
        "teacher": args.teacher, "student": args.student,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
        else platform.processor() or platform.machine(),
        "images": args.shards * args.images_per_shard, "batch_size": args.batch_size,
        "steps": s.steps, "images_per_s": round(s.images_per_s, 3),
        "data_wait_share": round(s.data_wait_share, 4),
        "steady_images_per_s": round(s.steady_images_per_s, 3),
        "steady_data_wait_share": round(s.steady_data_wait_share, 4),
        "steady_seconds_per_step": round(args.batch_size / s.steady_images_per_s, 4)
        if s.steady_images_per_s else None,
        "first_loss": round(s.first_loss, 5), "final_loss": round(s.final_loss, 5),
        "distill_seconds": round(s.seconds, 1), "embed_seconds": round(embed_s, 1),
    }))


if __name__ == "__main__":
    main()
