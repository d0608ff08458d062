"""Embedding pipeline vs a bare loop of the same model over the same images, in one run.

    python bench/embed.py --model sam_tiny --shards 4 --images-per-shard 32
    python bench/embed.py --model sam_vit_h --shards 8 --images-per-shard 32 --batch-size auto
        # on a GPU machine: CUDA, bf16, one actor with the GPU

prints JSON: bare images/s, pipeline images/s (Ray started beforehand; reading, decoding,
resizing, the actor pool and Parquet writing included) and their ratio, both end to end and in
the steady state;  the encoder's FLOPs per
image (torch's FLOP counter) and the bare loop's share of the device's peak (measured: a large
matmul, fp32 on a CPU, bf16 on a GPU; `--peak-tflops` adds the share of a data-sheet figure);
the peak RSS of the driver and all Ray processes during the pipeline run, and the bare loop's
peak device memory on CUDA.

End to end, a pipeline run carries a fixed start-up (Ray Data's planning, the actor's model
build and, with `auto`, its batch probe: ~7 s here) that a corpus of SA-1B's size never sees.
The steady-state rate takes it out: the pipeline also runs on the first `--warmup-shards` shards
alone, and (images of all - images of the first) / (seconds of all - seconds of the first) is
the rate at which the extra images went through, the fixed costs cancelling. A third, untimed
run of the first shards goes before both: the first run in a fresh Ray also starts and warms
its worker processes, a cost the later runs do not pay. `--repeats N` runs N such pairs and
reports their median (and each pair's ratio to bare).

The bare loop: on a CPU, prepare_image + encoder over pre-decoded images (1 thread less than
the cores, as the pipeline's actor) after one untimed warm-up batch; on CUDA, the encoder alone
over inputs prepared beforehand and copied from pinned host memory per batch, synchronised at
the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.memory import Peak  # noqa: E402
from models import build_model  # noqa: E402
from operators.runtime.batch_size import probe_batch_size  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402
from operators.shards.decode import decode_image  # noqa: E402
from operators.shards.sample import write_sample_corpus  # noqa: E402


def bare_loop(model_name: str, images: list, batch_size: int | str, threads: int,
              device: torch.device, precision: str) -> tuple[float, int, int | None]:
    """(images/s, the batch size used, peak device memory in bytes or None) of the encoder
    over pre-decoded images (see the module docstring for what is timed where)."""
    torch.set_num_threads(threads)
    if device.type == "cuda":  # as the actors (operators/runtime/device.py load_model)
        torch.backends.cudnn.benchmark = True
    model = build_model(model_name, seed=0).to(device)
    if batch_size == "auto":
        batch_size = probe_batch_size(model, device, precision, 64)
    if device.type != "cuda":
        def step(chunk: list) -> None:
            prepared = [model.prepare_image(im) for im in chunk]
            # NHWC memory seen as NCHW, as the Embedder feeds it
            pixels = torch.from_numpy(np.stack([p for p, _ in prepared])).permute(0, 3, 1, 2)
            with autocast(device, precision):
                model.embed_images(pixels, [hw for _, hw in prepared]).to(torch.float16)

        with torch.inference_mode():
            step(images[:batch_size])  # warm-up (oneDNN builds its kernels on first use)
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                step(images[i : i + batch_size])
        return len(images) / (time.perf_counter() - start), batch_size, None
    prepared = [model.prepare_image(im) for im in images]
    host = torch.from_numpy(np.stack([p for p, _ in prepared])).pin_memory()  # BxSxSx3
    hws = torch.tensor([hw for _, hw in prepared], device=device)
    with torch.inference_mode(), autocast(device, precision):
        model.embed_images(host[:batch_size].to(device).permute(0, 3, 1, 2),
                           hws[:batch_size])  # warm-up
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            pixels = host[i : i + batch_size].to(device, non_blocking=True).permute(0, 3, 1, 2)
            model.embed_images(pixels, hws[i : i + batch_size]).to(torch.float16)
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return len(images) / seconds, batch_size, torch.cuda.max_memory_allocated(device)


def profile_encoder(model_name: str, images: list, batch_size: int, device: torch.device,
                    precision: str, trace: str | None) -> dict:
    """Where the bare encoder's time goes, over up to 4 batches after a warm-up: wall time,
    the device's busy time (CUDA kernels; on a CPU the operators' self time) and its share,
    the rest being waiting (launch, copies, Python); the 5 costliest operators. `trace`: also
    write a Chrome trace there (chrome://tracing, Perfetto)."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(model_name, seed=0).to(device)
    prepared = [model.prepare_image(im) for im in images[: 4 * batch_size]]
    pixels = torch.from_numpy(np.stack([p for p, _ in prepared])).permute(0, 3, 1, 2)  # NHWC
    hws = [hw for _, hw in prepared]
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def run() -> None:
        for i in range(0, len(prepared), batch_size):
            model.embed_images(pixels[i : i + batch_size].to(device, non_blocking=True),
                               hws[i : i + batch_size])
        if cuda:
            torch.cuda.synchronize(device)

    with torch.inference_mode(), autocast(device, precision):
        run()  # warm-up
        with profile(activities=activities) as prof:
            start = time.perf_counter()  # the profiler's own start and stop not counted
            run()
            wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy_us = sum(getattr(e, attr) for e in events)
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:5]
    if trace:
        prof.export_chrome_trace(trace)
    return {
        "wall_ms": round(wall_us / 1e3, 1), "busy_ms": round(busy_us / 1e3, 1),
        "busy_share": round(min(busy_us / wall_us, 1.0), 3) if cuda else None,
        "top_ops": [{"op": e.key, "ms": round(getattr(e, attr) / 1e3, 1)} for e in top],
        "trace": trace,
    }


def encoder_flops(model_name: str, device: torch.device) -> int:
    """FLOPs of one image through the encoder (matmuls and convolutions, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(model_name, seed=0).to(device)
    s = model.image_size
    pixels = torch.zeros(1, 3, s, s, dtype=torch.uint8, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.embed_images(pixels, [(s, s)])
    return int(counter.get_total_flops())


def measured_peak_flops(device: torch.device, threads: int) -> float:
    """A practical peak: FLOP/s of a large matmul, fp32 with `threads` threads on a CPU
    (2048^3), bf16 on a GPU (8192^3)."""
    torch.set_num_threads(threads)
    cuda = device.type == "cuda"
    n, reps = (8192, 20) if cuda else (2048, 5)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="sam_tiny")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--images-per-shard", type=int, default=32)
    ap.add_argument("--min-side", type=int, default=480)
    ap.add_argument("--max-side", type=int, default=800)
    ap.add_argument("--batch-size", type=lambda v: v if v == "auto" else int(v), default=8,
                    help="images per encoder call, or auto (fit the device)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                    help="default: bf16 on CUDA, fp32 on a CPU")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's data-sheet dense peak, for a second %% figure")
    ap.add_argument("--profile", nargs="?", const="", default=None, metavar="TRACE.json",
                    help="profile the bare encoder (device busy time vs wall, top operators);"
                    " with a path, also write a Chrome trace")
    ap.add_argument("--warmup-shards", type=int, default=None,
                    help="shards of the short pipeline run for the steady-state rate "
                    "(default: half of --shards; 0: skip it)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="short + full pipeline pairs; the steady-state rate is their median")
    ap.add_argument("--bare-only", action="store_true",
                    help="skip the pipeline runs (no Ray needed): bare loop, FLOPs, profile")
    ap.add_argument("--ray-batch-size", type=int, default=None,
                    help="rows per actor call (default: the batch size, or 64 with auto)")
    args = ap.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    ray_batch = args.ray_batch_size or (64 if args.batch_size == "auto" else args.batch_size)
    warmup = args.shards // 2 if args.warmup_shards is None else args.warmup_shards
    if args.repeats < 1:
        ap.error(f"--repeats: expected >= 1, got {args.repeats}")
    if not 0 <= warmup < args.shards:
        ap.error(f"--warmup-shards: expected 0..{args.shards - 1}, got {warmup}")

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
        threads = max(1, cpus - 1)
        bare, batch, device_peak = bare_loop(args.model, images, args.batch_size, threads,
                                             device, precision)

        profiled = (profile_encoder(args.model, images, batch, device, precision,
                                    args.profile or None)
                    if args.profile is not None else None)
        flops = encoder_flops(args.model, device)
        peak = measured_peak_flops(device, threads)

        gpu = device.type == "cuda"
        if gpu:  # the bare loop's cached blocks would look taken to the actor's batch probe
            gc.collect()
            torch.cuda.empty_cache()

        def pipeline_run(limit: int | None, out: str):
            from pipelines.config import parse_config
            from pipelines.embed import run_embed
            from pipelines.ray_env import init_ray

            init_ray(None, num_cpus=cpus)
            cfg = parse_config({
                "input": {"urls": [corpus], "limit": limit},
                "output": {"path": os.path.join(tmp, out)},
                # the bare loop's batch (auto resolved there): both sides run the same batches
                "model": {"name": args.model, "batch_size": batch,
                          "precision": precision},
                "compute": {"ray_batch_size": ray_batch, "actors": 1,
                            "gpus_per_actor": 1 if gpu else 0,
                            "cpus_per_actor": 1 if gpu else threads},
            })
            return run_embed(cfg)

        short, summary, rates = None, None, []
        if warmup and not args.bare_only:
            pipeline_run(warmup, "out-warm")  # Ray's first run also starts and imports workers
        rss = Peak()
        rss.start()
        for rep in range(1 if args.bare_only else args.repeats):
            if warmup and not args.bare_only:
                short = pipeline_run(warmup, f"out-short{rep}")
            summary = None if args.bare_only else pipeline_run(None, f"out{rep}")
            if short is not None and summary is not None:
                extra_images = (summary.images_ok + summary.images_failed
                                - short.images_ok - short.images_failed)
                extra_seconds = summary.seconds - short.seconds
                if extra_seconds > 0:
                    rates.append(extra_images / extra_seconds)
        rss.stop()
    steady = statistics.median(rates) if rates else None
    pipeline = summary.images_per_s if summary else None
    print(json.dumps({
        "bench": "embed", "model": args.model, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cores": cpus, "precision": precision, "batch_size": batch,
        "images": len(images), "bare_images_per_s": round(bare, 3),
        "pipeline_images_per_s": round(pipeline, 3) if summary else None,
        "pipeline_to_bare": round(pipeline / bare, 3) if summary else None,
        "pipeline_seconds": round(summary.seconds, 2) if summary else None,
        "pipeline_short_seconds": round(short.seconds, 2) if short else None,
        "pipeline_steady_images_per_s": round(steady, 3) if steady else None,
        "pipeline_steady_to_bare": round(steady / bare, 3) if steady else None,
        "pipeline_steady_to_bare_each": [round(r / bare, 3) for r in rates],
        "warmup_shards": warmup,
        "encoder_gflops_per_image": round(flops / 1e9, 2),
        "device_peak_gflops_measured": round(peak / 1e9, 1),
        "bare_percent_of_peak": round(100 * bare * flops / peak, 1),
        "pipeline_steady_percent_of_peak": (round(100 * steady * flops / peak, 1)
                                            if steady else None),
        "bare_percent_of_datasheet": (round(100 * bare * flops / (args.peak_tflops * 1e12), 1)
                                      if args.peak_tflops else None),
        "bytes_written": summary.bytes_written if summary else None,
        "peak_rss_mib": round(rss.total / 1024) if summary else None,
        "peak_rss_mib_driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "profile": profiled,
        "peak_device_memory_mib": (round(device_peak / 2**20) if device_peak is not None
                                   else None),  # the bare loop's
    }))


if __name__ == "__main__":
    main()
