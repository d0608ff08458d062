"""Encoder and decoder speed of every registry model, side by side in one run.

    python bench/models.py                       # every model but ViT-H/L, on this machine
    python bench/models.py --models mobile_sam efficientvit_sam_l0 --device cuda --precision bf16

Per model with an image encoder and a prompt decoder (FastSAM: bench/everything.py): encoder
images/s (prepare on the host excluded: the model input is ready on the
device), decoder prompts/s (single-point prompts, `--prompts` per call, multimask) and from it
the decoder images/s of everything mode at 32x32 points (1024 prompts an image). Seeded random
weights: speed does not depend on the values. Prints one JSON object.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import (  # noqa: E402
    HighResPromptableModel,
    PromptableModel,
    build_model,
    models_of_kind,
)
from operators.runtime.device import autocast  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, min_s: float, min_reps: int) -> float:
    """Seconds per call of fn(), after one warm-up call, over at least min_reps calls and
    min_s seconds."""
    fn()
    _sync(device)
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_s:
        fn()
        reps += 1
    _sync(device)
    return (time.perf_counter() - start) / reps


def bench_model(name: str, device: torch.device, precision: str, batch: int, prompts: int,
                min_s: float, min_reps: int) -> dict:
    model = build_model(name, seed=0).to(device)
    ctx = autocast(device, precision)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    prepared, hw = model.prepare_image(image)
    pixels = torch.from_numpy(np.ascontiguousarray(prepared)).permute(2, 0, 1)[None]
    pixels = pixels.repeat(batch, 1, 1, 1).to(device)
    hws = [hw] * batch
    with torch.inference_mode(), ctx:
        extra = {}
        if isinstance(model, HighResPromptableModel):  # SAM 2: the decoder needs more
            feats = model.embed_images_with_features(pixels, hws)
            emb = feats["image_embed"]
            extra["high_res_features"] = [f[:1] for f in feats["high_res_feats"]]
        else:
            emb = model.embed_images(pixels, hws)
        enc_s = timed(lambda: model.embed_images(pixels, hws), device, min_s, min_reps)
        pts = rng.uniform(0, 1, (prompts, 1, 2)) * np.array([1024, 768])
        coords = model.transform_coords(torch.from_numpy(pts), image.shape[:2]).to(device)
        labels = torch.ones(prompts, 1, dtype=torch.int, device=device)
        one = emb[:1]
        dec_s = timed(lambda: model.decode(one, point_coords=coords, point_labels=labels,
                                           multimask_output=True, **extra),
                      device, min_s, min_reps)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name, "params_m": round(params / 1e6, 1), "encoder_input": model.image_size,
        "encoder_images_per_s": round(batch / enc_s, 3),
        "decoder_prompts_per_s": round(prompts / dec_s, 1),
        "decoder_images_per_s_32x32": round(prompts / dec_s / 1024, 3),
    }


def prompt_models() -> list[str]:
    """Registry models with an encoder + prompt decoder (one-pass models such as FastSAM have
    neither: bench/everything.py compares them), without ViT-H/L."""
    return [n for n in models_of_kind(PromptableModel) if n not in ("sam_vit_h", "sam_vit_l")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=prompt_models())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=1, help="images per encoder call")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per decoder call")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--min-reps", type=int, default=2)
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, device, args.precision, args.batch, args.prompts,
                                args.min_seconds, args.min_reps))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "bench": "models", "date": date.today().isoformat(), "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "precision": args.precision, "batch": args.batch, "prompts": args.prompts,
        "results": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
