"""Embedding pipeline vs a bare loop of the same model over the same images, in one run.

    python bench/embed.py --model sam_tiny --shards 4 --images-per-shard 32
prints JSON: bare images/s, pipeline images/s (Ray started beforehand; reading, decoding,
resizing, the actor pool and Parquet writing included) and their ratio; the encoder's FLOPs per
image (torch's FLOP counter) and the bare loop's share of the device's peak (on a CPU the peak
is measured: a large fp32 matmul; on a GPU, --peak-tflops from the data sheet); the peak RSS
of the driver and all Ray processes during the pipeline run, and peak device memory on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.memory import Peak  # noqa: E402
from models import build_model  # noqa: E402
from operators.decode import decode_image  # noqa: E402
from operators.sample import write_sample_corpus  # noqa: E402
from pipelines.config import parse_config  # noqa: E402
from pipelines.embed import run_embed  # noqa: E402
from pipelines.ray_env import init_ray  # noqa: E402


def bare_loop(model_name: str, images: list, batch_size: int, threads: int) -> float:
    """images/s of prepare_image + encoder over pre-decoded images, in model batches."""
    torch.set_num_threads(threads)
    model = build_model(model_name, seed=0)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            prepared = [model.prepare_image(im) for im in chunk]
            pixels = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p, _ in prepared])
            model.embed_images(pixels, [hw for _, hw in prepared]).to(torch.float16)
    return len(images) / (time.perf_counter() - start)


def encoder_flops(model_name: str) -> int:
    """FLOPs of one image through the encoder (matmuls and convolutions, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name, seed=0)
    s = model.image_size
    pixels = torch.zeros(1, 3, s, s, dtype=torch.uint8)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.embed_images(pixels, [(s, s)])
    return int(counter.get_total_flops())


def cpu_peak_flops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Measured fp32 matmul FLOP/s of this CPU with `threads` threads (a practical peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="sam_tiny")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--images-per-shard", type=int, default=32)
    ap.add_argument("--min-side", type=int, default=480)
    ap.add_argument("--max-side", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus")
        shards = write_sample_corpus(corpus, shards=args.shards,
                                     images_per_shard=args.images_per_shard,
                                     min_side=args.min_side, max_side=args.max_side)
        images = []
        for path in shards:
            with tarfile.open(path) as tar:
                for m in tar:
                    if m.name.endswith(".jpg"):
                        images.append(decode_image(tar.extractfile(m).read()))
        bare = bare_loop(args.model, images, args.batch_size, threads=max(1, cpus - 1))

        flops = encoder_flops(args.model)
        peak = cpu_peak_flops(threads=max(1, cpus - 1))

        init_ray(None, num_cpus=cpus)
        cfg = parse_config({
            "input": {"urls": [corpus]}, "output": {"path": os.path.join(tmp, "out")},
            "model": {"name": args.model, "batch_size": args.batch_size},
            "compute": {"ray_batch_size": args.batch_size, "cpus_per_actor": max(1, cpus - 1)},
        })
        rss = Peak()
        rss.start()
        summary = run_embed(cfg)
        rss.stop()
    pipeline = summary.images_per_s
    print(json.dumps({
        "bench": "embed", "model": args.model, "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": cpus,
        "images": len(images), "bare_images_per_s": round(bare, 3),
        "pipeline_images_per_s": round(pipeline, 3),
        "pipeline_to_bare": round(pipeline / bare, 3),
        "encoder_gflops_per_image": round(flops / 1e9, 2),
        "device_peak_gflops_measured": round(peak / 1e9, 1),
        "bare_percent_of_peak": round(100 * bare * flops / peak, 1),
        "bytes_written": summary.bytes_written,
        "peak_rss_mib": round(rss.total / 1024),
        "peak_rss_mib_driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_device_memory_mib": None,  # CPU run
    }))


if __name__ == "__main__":
    main()
