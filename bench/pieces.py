"""Feeding the model from any number of shards (issue 28): images/s of `samdata embed` when a
shard is read by many tasks (input.images_per_task) against one task per shard, and 8 shards
against 1 shard of the same images, with a model cheap enough that decoding dominates.

    python bench/pieces.py --images 64 --per-task 8 --shards 8 --ray-cpus 3

Writes `--images` SA-1B-size JPEGs (1500x2250, q90, textured: ~0.6 MB each, seeded) once, as
one SA-1B shard and as `--shards` shards holding the same bytes; times, in one process and
one local Ray, after an untimed warm-up run: (a) the one shard in one read task, (b) the one
shard in pieces of --per-task images, (c) the 8 shards in pieces; and a run of one image,
whose time is the fixed start-up of a run (Ray Data planning, the actor's start): "steady"
rates take it off, as a corpus of SA-1B's size never notices it. Also times the CPU decode
of one image alone (PIL, one thread), full size and with JPEG draft at 1024 and at 128 (the
figures the sizing rule of infra/README.md uses), and the read step alone (no actor, no
writer) for (a)-(c). Prints one JSON object.

Ray is told --ray-cpus CPUs: the model actor takes one CPU slot while sam_tiny (~3 ms an image
at 128 px) leaves its core almost idle, so on 2 cores 3 slots let two read tasks run beside
it, which is what a GPU node's spare cores do for a real model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SA1B_HW = (1500, 2250)  # SA-1B's usual image size (H, W)


def sa1b_jpeg(rng: np.random.Generator, h: int = SA1B_HW[0], w: int = SA1B_HW[1]) -> bytes:
    """A photo-like HxW JPEG (q90): smooth colour fields, shapes and grain, ~0.6 MB at SA-1B
    size (real SA-1B JPEGs are 0.4-1 MB)."""
    from PIL import Image, ImageDraw, ImageFilter

    small = rng.integers(0, 255, (h // 50 + 1, w // 50 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(50, 600)), y0 + int(rng.integers(50, 600))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1))
    grain = rng.normal(0, 4, (h, w, 3))
    pixels = np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(folder: Path, images: list[bytes], shards: int) -> None:
    """`images` as `shards` SA-1B shards (sa_NNNNNN.tar, sa_<id>.jpg + sa_<id>.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(images) // shards)
    for s in range(shards):
        with tarfile.open(folder / f"sa_{s:06d}.tar", "w") as tar:
            for i in range(s * per, min(len(images), (s + 1) * per)):
                meta = json.dumps({"image": {"image_id": i + 1, "height": SA1B_HW[0],
                                             "width": SA1B_HW[1]}, "annotations": []}).encode()
                for name, data in ((f"sa_{i + 1}.jpg", images[i]), (f"sa_{i + 1}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def decode_ms(images: list[bytes]) -> dict[str, float]:
    """Median ms to decode one image on one thread: full size, and with JPEG draft at the
    long sides 1024 (SAM ViT-H/B, the 1024 students) and 128 (sam_tiny), each followed by the
    model's resize and pad (sam_vit_h / sam_tiny preprocessing)."""
    import torch

    from operators.shards.decode import decode_image_for
    from operators.shards.prepare import model_skeleton

    torch.set_num_threads(1)
    out = {}
    for label, model, draft in (("full_1024", "sam_vit_h", None), ("draft_1024", "sam_vit_h",
                                1024), ("full_128", "sam_tiny", None),
                                ("draft_128", "sam_tiny", 128)):
        skeleton = model_skeleton(model)
        times = []
        for data in images:
            start = time.perf_counter()
            image, _ = decode_image_for(data, max_image_pixels=10**9, draft_long_side=draft)
            skeleton.prepare_image(image)
            times.append(time.perf_counter() - start)
        out[label] = round(1000 * statistics.median(times), 1)
    return out


def run(corpus: Path, out: Path, per_task: int, model: str) -> dict:
    from pipelines.config import parse_config
    from pipelines.embed import run_embed

    cfg = parse_config({"input": {"urls": [str(corpus)], "images_per_task": per_task},
                        "output": {"path": str(out)}, "model": {"name": model},
                        "compute": {"ray_batch_size": 8}})
    summary = run_embed(cfg)
    assert summary.complete, summary.text()
    return {"images": summary.images_ok, "seconds": round(summary.seconds, 2),
            "images_per_s": round(summary.images_ok / summary.seconds, 2)}


def read_only(corpus: Path, per_task: int, model: str) -> dict:
    """Seconds of the read step alone (plan + read_and_prepare on Ray tasks, rows counted on
    the driver; no actor, no writer): what pieces change, without the model's share of CPU."""
    import ray

    from operators.config import InputConfig
    from operators.shards.listing import list_shards
    from operators.shards.pieces import plan_pieces
    from operators.shards.prepare import read_and_prepare
    from operators.shards.schema import shard_item

    start = time.perf_counter()
    cfg = InputConfig(urls=[str(corpus)], images_per_task=per_task)
    items = [p for s in list_shards(cfg.urls) for p in plan_pieces(shard_item(s), cfg)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    rows = ds.flat_map(read_and_prepare, fn_kwargs=dict(model_name=model,
                                                        input_cfg=cfg)).count()
    seconds = time.perf_counter() - start
    return {"tasks": len(items), "rows": rows, "seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--per-task", type=int, default=8, help="input.images_per_task of (b), (c)")
    ap.add_argument("--shards", type=int, default=8, help="shards of (c)")
    ap.add_argument("--model", default="sam_tiny")
    ap.add_argument("--ray-cpus", type=int, default=(os.cpu_count() or 2) + 1)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best kept")
    args = ap.parse_args()
    from pipelines.ray_env import init_ray

    rng = np.random.default_rng(0)
    images = [sa1b_jpeg(rng) for _ in range(args.images)]
    mean_mb = sum(map(len, images)) / len(images) / 2**20
    decode = decode_ms(images[:8])
    init_ray(None, num_cpus=args.ray_cpus)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_shards(root / "one", images, 1)
        write_shards(root / "many", images, args.shards)
        write_shards(root / "warm", images[:4], 1)
        write_shards(root / "single", images[:1], 1)
        run(root / "warm", root / "out-warm", args.per_task, args.model)  # workers, actor
        fixed = min(run(root / "single", root / f"out-single-{r}", args.per_task,
                        args.model)["seconds"] for r in range(args.repeats))
        cases = {"one_shard_one_task": ("one", 10**9), "one_shard_pieces": ("one", args.per_task),
                 f"{args.shards}_shards_pieces": ("many", args.per_task)}
        results: dict[str, dict] = {}
        for r in range(args.repeats):
            for name, (corpus, per_task) in cases.items():
                got = run(root / corpus, root / f"out-{name}-{r}", per_task, args.model)
                print(json.dumps({name: got}), file=sys.stderr, flush=True)
                if name not in results or got["seconds"] < results[name]["seconds"]:
                    results[name] = got
        reads = {}
        for name, (corpus, per_task) in cases.items():
            reads[name] = min((read_only(root / corpus, per_task, args.model)
                               for _ in range(args.repeats)), key=lambda r: r["seconds"])
            print(json.dumps({f"read_only {name}": reads[name]}), file=sys.stderr, flush=True)
    for got in results.values():
        got["steady_images_per_s"] = round((got["images"] - 1) / (got["seconds"] - fixed), 2)
    one, cut, many = (results[n]["images_per_s"] for n in cases)
    steady = [results[n]["steady_images_per_s"] for n in cases]
    print(json.dumps({
        "bench": "pieces", "model": args.model, "images": args.images,
        "image_hw": list(SA1B_HW), "mean_jpeg_mb": round(mean_mb, 2),
        "per_task": args.per_task, "shards": args.shards, "ray_cpus": args.ray_cpus,
        "cores": os.cpu_count(), "decode_ms_one_thread": decode,
        "load_average": [round(v, 2) for v in os.getloadavg()], "runs": results,
        "fixed_seconds_per_run": fixed,
        "pieces_to_one_task": round(cut / one, 3),
        "many_shards_to_one_shard_pieces": round(many / cut, 3),
        "steady_pieces_to_one_task": round(steady[1] / steady[0], 3),
        "steady_many_shards_to_one_shard_pieces": round(steady[2] / steady[1], 3),
        "read_only": reads,
        "read_only_pieces_to_one_task": round(
            reads["one_shard_one_task"]["seconds"] / reads["one_shard_pieces"]["seconds"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
