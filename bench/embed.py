"""Embedding pipeline vs a bare loop of the same model over the same images, in one run.

    python bench/embed.py --model sam_tiny --shards 4 --images-per-shard 32
prints JSON: bare images/s, pipeline images/s (Ray started beforehand; reading, decoding,
resizing, the actor pool and Parquet writing included) and their ratio.
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

        init_ray(None, num_cpus=cpus)
        cfg = parse_config({
            "input": {"urls": [corpus]}, "output": {"path": os.path.join(tmp, "out")},
            "model": {"name": args.model, "batch_size": args.batch_size},
            "compute": {"ray_batch_size": args.batch_size, "cpus_per_actor": max(1, cpus - 1)},
        })
        summary = run_embed(cfg)
    pipeline = summary.images_per_s
    print(json.dumps({
        "bench": "embed", "model": args.model, "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "cores": cpus,
        "images": len(images), "bare_images_per_s": round(bare, 3),
        "pipeline_images_per_s": round(pipeline, 3),
        "pipeline_to_bare": round(pipeline / bare, 3),
        "bytes_written": summary.bytes_written,
        "peak_rss_mib_driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
