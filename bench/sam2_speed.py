"""SAM 2.1 beside SAM: encoder speed of every Hiera size and of SAM ViT-B/L/H, and everything
mode ours vs the official SAM2AutomaticMaskGenerator on the same weights.

    python bench/sam2_speed.py --part encoders           # 1 image each at 1024, this device
    python bench/sam2_speed.py --part encoders --device cuda --precision bf16 --images 8 --reps 5
    python bench/sam2_speed.py --part everything --images 2 --points-per-side 16

encoders: each model's `embed_images` (SAM 2.1: its image embedding and, as its decoder needs
them, the high-res maps: `embed_images_with_features`) on `--images` prepared 1024x1024
inputs already on the device, `--warmup` calls then `--reps` timed calls; images/s, and each
model's speed as a multiple of sam_vit_h's (the teacher of the SAM 1 recipes). The weights are
the modules' initialisers (speed does not depend on the values); the input is the real 1024.

everything: `sam2_tiny_test` with seeded weights (the mask hypernetworks' last layer x40, as
in tests/operators/test_sam2_amg.py, so random weights give masks with structure): the
official `SAM2AutomaticMaskGenerator` (PyPI sam2 1.1.0, `make` installs it; built on our
weights by tests/golden/make_sam2_official.py) one image at a time, and our MaskGenerator on
all images, same settings; images/s of both, their ratio, masks at IoU >= 0.9 to the official.

Prints one JSON object. (Not named sam2.py: the script's folder comes first on sys.path and
would shadow the official `sam2` package.)
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

from models import HighResPromptableModel, build_model  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402

ENCODERS = ("sam2_1_hiera_t", "sam2_1_hiera_s", "sam2_1_hiera_b_plus", "sam2_1_hiera_l",
            "sam_vit_b", "sam_vit_l", "sam_vit_h")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_encoder(name: str, device: torch.device, precision: str, images: int, warmup: int,
                  reps: int) -> dict:
    """images/s of one model's encoder on `images` prepared inputs a call."""
    model = build_model(name).to(device)
    rng = np.random.default_rng(0)
    prepared, hw = model.prepare_image(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    pixels = torch.from_numpy(np.ascontiguousarray(prepared)).permute(2, 0, 1)[None]
    pixels = pixels.repeat(images, 1, 1, 1).to(device)
    hws = [hw] * images
    high_res = isinstance(model, HighResPromptableModel)

    def call() -> None:
        if high_res:  # what everything mode and segment run: the decoder needs the maps
            model.embed_images_with_features(pixels, hws)
        else:
            model.embed_images(pixels, hws)

    with torch.inference_mode(), autocast(device, precision):
        for _ in range(warmup):
            call()
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            call()
        _sync(device)
        seconds = (time.perf_counter() - start) / reps
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params_m": round(params / 1e6, 1), "input": model_input(name),
            "high_res_features": high_res, "seconds_per_call": round(seconds, 3),
            "encoder_images_per_s": round(images / seconds, 4)}


def model_input(name: str) -> int:
    from operators.shards.prepare import model_skeleton

    return model_skeleton(name).image_size


def encoders(args: argparse.Namespace, device: torch.device) -> dict:
    rows = []
    for name in args.models:
        rows.append(bench_encoder(name, device, args.precision, args.images, args.warmup,
                                  args.reps))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ref = next((r["encoder_images_per_s"] for r in rows if r["model"] == "sam_vit_h"), None)
    for r in rows:
        r["x_sam_vit_h"] = round(r["encoder_images_per_s"] / ref, 2) if ref else None
    return {"images_per_call": args.images, "warmup": args.warmup, "reps": args.reps,
            "results": rows}


def everything(args: argparse.Namespace, device: torch.device) -> dict:
    from pycocotools import mask as mask_utils

    from bench.autolabel import images as bench_images
    from operators.config import GeneratorConfig
    from operators.everything.grid import MaskGenerator
    from tests.golden.make_sam2_official import official_predictor


    ours = build_model("sam2_tiny_test", seed=args.seed)
    sd = ours.state_dict()
    for k in sd:
        if k.startswith("sam_mask_decoder.output_hypernetworks_mlps") and k.endswith(
                "layers.2.weight"):
            sd[k] = sd[k] * 40
    ours.load_state_dict(sd)
    ours.to(device)
    ref = official_predictor(ours)
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    settings = GeneratorConfig(points_per_side=args.points_per_side,
                               pred_iou_thresh=args.pred_iou_thresh,
                               stability_score_thresh=args.stability_score_thresh,
                               box_nms_thresh=args.box_nms_thresh, use_m2m=args.use_m2m)
    official = SAM2AutomaticMaskGenerator(ref.model, output_mode="coco_rle",
                                          **settings.settings(one_pass=False))
    official.predictor._bb_feat_sizes = ref._bb_feat_sizes  # the test config's feature sizes
    ims = bench_images(args.images, args.height, args.width, args.seed)

    _sync(device)
    start = time.perf_counter()
    theirs = [official.generate(im) for im in ims]
    _sync(device)
    t_ref = time.perf_counter() - start
    generator = MaskGenerator(ours, settings, batch_size=args.images)
    _sync(device)
    start = time.perf_counter()
    got = generator.generate(ims)
    _sync(device)
    t_ours = time.perf_counter() - start

    close = total = 0
    for r_anns, g_anns in zip(theirs, got, strict=True):
        g = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}
             for a in g_anns]
        for a in r_anns:
            total += 1
            r = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}]
            close += bool(g) and bool(mask_utils.iou(r, g, [0] * len(g)).max() >= 0.9)
    return {"model": "sam2_tiny_test", "images": len(ims), "image_hw": [args.height, args.width],
            "settings": settings.settings(one_pass=False),
            "official": {"seconds": round(t_ref, 2), "images_per_s": round(len(ims) / t_ref, 3),
                         "masks": sum(map(len, theirs))},
            "ours": {"seconds": round(t_ours, 2), "images_per_s": round(len(ims) / t_ours, 3),
                     "masks": sum(map(len, got))},
            "speedup": round(t_ref / t_ours, 3),
            "masks_iou_ge_0.9": round(close / max(total, 1), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["encoders", "everything"],
                    choices=["encoders", "everything"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="encoders only (the official generator runs in fp32)")
    ap.add_argument("--models", nargs="+", default=list(ENCODERS))
    ap.add_argument("--images", type=int, default=1,
                    help="encoders: images a call; everything: images generated")
    ap.add_argument("--warmup", type=int, default=0, help="encoders: untimed calls first")
    ap.add_argument("--reps", type=int, default=1, help="encoders: timed calls")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--pred-iou-thresh", type=float, default=0.4,
                    help="random weights: SAM 2.1's 0.8 would keep almost nothing")
    ap.add_argument("--stability-score-thresh", type=float, default=0.6)
    ap.add_argument("--box-nms-thresh", type=float, default=1.0,
                    help="random weights give near-identical masks that NMS collapses to one")
    ap.add_argument("--use-m2m", action="store_true")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    device = torch.device(args.device)
    out = {"bench": "sam2", "date": date.today().isoformat(), "device": str(device),
           "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or platform.machine()),
           "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "precision": args.precision,
           "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    if "encoders" in args.part:
        out["encoders"] = encoders(args, device)
    if "everything" in args.part:
        out["everything"] = everything(args, device)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
