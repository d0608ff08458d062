"""Prompted masks (`samdata segment`'s actor core) vs the official predictor's per-prompt loop,
same model, same images, same box prompts.

    python bench/segment.py --model mobile_sam --images 4 --boxes 50

The reference is segment-anything's own `SamPredictor` (the PyPI package of the test extra,
torchvision stood in as in bench/official.py), used the straightforward way: `set_image` per
image, then `predict(box=..., multimask_output=True)` per box, the mask of highest predicted IoU
kept and encoded to COCO RLE (pycocotools). For students the official `Sam` is assembled around
our encoder module (MobileSAM's own package is segment-anything with a TinyViT encoder), so
both load the same seeded random weights; the mask hypernetworks' last layer is scaled (x40,
as in bench/autolabel.py) so that random weights give masks with structure. Ours is
`operators.prompted.sam.SamPrompter`: the images through the encoder together, the boxes of all
images through the decoder `--decoder-batch-size` at a time, only the kept mask upscaled, RLE
from run-length change points computed where the masks are.

Prints JSON: prompts/s of both, end to end and for the prompt part alone (after the images are
encoded), their ratios, the share of prompts whose masks are identical and the lowest IoU
between ours and the official mask of a prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.autolabel import images as make_images  # noqa: E402
from bench.official import paired_models  # noqa: E402
from models import model_kind  # noqa: E402
from models.protocols import PromptableModel  # noqa: E402
from operators.everything.runlength import masks_to_annotations  # noqa: E402
from operators.prompted.prompts import PromptSet, make_prompt  # noqa: E402
from operators.prompted.sam import SamPrompter  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402


def boxes(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """float64 Nx4 XYXY boxes of 10-60% of each side, inside an HxW image."""
    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(0.1, 0.6, n) * w, rng.uniform(0.1, 0.6, n) * h
    x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).round(1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobile_sam", help="a promptable registry model")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--boxes", type=int, default=50, help="box prompts per image")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=4, help="images per encoder call")
    ap.add_argument("--decoder-batch-size", type=int, default=64, help="prompts per call")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="ours only (the official predictor runs fp32; identical masks "
                    "assume fp32)")
    args = ap.parse_args()
    if model_kind(args.model) is not PromptableModel or args.model.startswith("efficient_sam"):
        raise SystemExit(f"expected a SAM-design model the official predictor runs, got "
                         f"{args.model}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    sa, ours, theirs = paired_models(args.model, args.seed)
    ours, theirs = ours.to(device), theirs.to(device)
    ims = make_images(args.images, args.height, args.width, args.seed)
    prompts = [boxes(args.boxes, args.height, args.width, args.seed + i)
               for i in range(len(ims))]
    n_prompts = sum(len(b) for b in prompts)

    # The official predictor, one image then one box at a time
    predictor = sa.SamPredictor(theirs)
    predictor.set_image(ims[0])  # warm-up, untimed
    predictor.predict(box=prompts[0][0], multimask_output=True)
    ref, t_ref_encode = [], 0.0
    _sync(device)
    start = time.perf_counter()
    for image, image_boxes in zip(ims, prompts, strict=True):
        t0 = time.perf_counter()
        predictor.set_image(image)
        _sync(device)
        t_ref_encode += time.perf_counter() - t0
        for box in image_boxes:
            masks, iou, _ = predictor.predict(box=box, multimask_output=True)
            best = masks[int(np.argmax(iou))]
            rle = mask_utils.encode(np.asfortranarray(best.astype(np.uint8)))
            ref.append((best, rle["counts"]))
    _sync(device)
    t_ref = time.perf_counter() - start

    # Ours: every image and box in one call
    prompter = SamPrompter(ours, batch_size=args.batch_size,
                           decoder_batch_size=args.decoder_batch_size)
    ps = PromptSet.from_prompts([[make_prompt(b.tolist()) for b in image_boxes]
                                 for image_boxes in prompts])
    with autocast(device, args.precision):  # warm-up, untimed
        list(prompter.iter_masks(ims[:1], PromptSet.from_prompts([[make_prompt(
            prompts[0][0].tolist())]])))
    got: dict[int, tuple[np.ndarray, str]] = {}
    _sync(device)
    start = time.perf_counter()
    with autocast(device, args.precision):
        encoded = prompter.encode(ims)
        _sync(device)
        t_encode = time.perf_counter() - start
        for chunk in prompter.masks(encoded, ps):
            found = masks_to_annotations(chunk.masks)
            host = chunk.masks.cpu().numpy()
            for k, ann, mask in zip(chunk.index.tolist(), found, host, strict=True):
                got[k] = (mask, ann["segmentation"]["counts"])
    _sync(device)
    t_ours = time.perf_counter() - start

    same = sum(bool((got[k][0] == ref[k][0]).all()) for k in range(n_prompts)) / n_prompts
    ious = [(got[k][0] & ref[k][0]).sum() / max((got[k][0] | ref[k][0]).sum(), 1)
            for k in range(n_prompts)]
    same_rle = sum(got[k][1] == ref[k][1].decode() for k in range(n_prompts)) / n_prompts
    print(json.dumps({
        "bench": "segment", "model": args.model, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "precision_ours": args.precision, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "images": len(ims),
        "image_hw": [args.height, args.width], "prompts": n_prompts,
        "batch_size": args.batch_size, "decoder_batch_size": args.decoder_batch_size,
        "official": {"seconds": round(t_ref, 3), "encode_seconds": round(t_ref_encode, 3),
                     "prompts_per_s": round(n_prompts / t_ref, 2),
                     "prompt_part_per_s": round(n_prompts / (t_ref - t_ref_encode), 2)},
        "ours": {"seconds": round(t_ours, 3), "encode_seconds": round(t_encode, 3),
                 "prompts_per_s": round(n_prompts / t_ours, 2),
                 "prompt_part_per_s": round(n_prompts / (t_ours - t_encode), 2)},
        "speedup": round(t_ref / t_ours, 3),
        "speedup_prompt_part": round((t_ref - t_ref_encode) / (t_ours - t_encode), 3),
        "identical_masks": round(same, 4), "identical_rle": round(same_rle, 4),
        "min_mask_iou_with_official": round(float(min(ious)), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
