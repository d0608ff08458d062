"""Everything-mode speed of the cheap labelers side by side: FastSAM (one pass) vs the SAM
students (point grid), same images, one run.

    python bench/everything.py                                   # CPU defaults
    python bench/everything.py --device cuda --precision bf16 --points-per-side 32 --images 16

Per model: images/s and masks/image of the generator the auto-labeling actor runs for it
(`OnePassGenerator` for one-pass models, `MaskGenerator` for promptable ones) with the
generator defaults (FastSAM: imgsz 1024, conf 0.4, iou 0.9; SAM family: the official thresholds)
except `--points-per-side`. Seeded random weights: the timings stand, the mask counts do not
(random SAM decoders rarely pass the 0.88/0.95 filters, random detectors find what their
biases say). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.autolabel import images as structured_images  # noqa: E402
from models import (  # noqa: E402
    OnePassModel,
    build_model,  # noqa: E402
    model_kind,
)
from operators.config import GeneratorConfig  # noqa: E402
from operators.everything.grid import MaskGenerator  # noqa: E402
from operators.everything.one_pass import OnePassGenerator  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402

DEFAULT_MODELS = ["fastsam_s", "fastsam_x", "mobile_sam", "efficientvit_sam_l0"]


def generator_for(model: torch.nn.Module, points_per_side: int, imgsz: int):
    if model_kind(model.model_name) is OnePassModel:
        return OnePassGenerator(model, GeneratorConfig(detection_imgsz=imgsz)), "one-pass"
    return MaskGenerator(model, GeneratorConfig(points_per_side=points_per_side)), "point grid"


def bench_model(name: str, device: torch.device, precision: str, batch: list,
                points_per_side: int, imgsz: int, reps: int) -> dict:
    model = build_model(name, seed=0).to(device)
    generator, kind = generator_for(model, points_per_side, imgsz)
    with torch.inference_mode(), autocast(device, precision):
        generator.generate(batch[:1])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        masks = 0
        for _ in range(reps):
            masks += sum(len(a) for a in generator.generate(batch))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    n = len(batch) * reps
    return {
        "model": name, "mode": kind,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "prompts": points_per_side**2 if kind == "point grid" else 0,
        "images_per_s": round(n / seconds, 4), "masks_per_image": round(masks / n, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--images", type=int, default=2, help="images per generate() call")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--points-per-side", type=int, default=16,
                    help="SAM students' grid (official default 32; 16 keeps a CPU run short)")
    ap.add_argument("--imgsz", type=int, default=1024, help="FastSAM letterbox size")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    device = torch.device(args.device)
    batch = structured_images(args.images, args.height, args.width, seed=0)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, device, args.precision, batch, args.points_per_side,
                                args.imgsz, args.reps))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    fastest_student = max((r["images_per_s"] for r in rows if r["mode"] == "point grid"),
                          default=None)
    for r in rows:
        if fastest_student and r["mode"] == "one-pass":
            r["vs_fastest_student"] = round(r["images_per_s"] / fastest_student, 2)
    print(json.dumps({
        "bench": "everything", "date": date.today().isoformat(), "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "precision": args.precision, "images": args.images,
        "image_hw": [args.height, args.width], "points_per_side": args.points_per_side,
        "results": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
