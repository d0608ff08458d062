"""Everything-mode generator vs the official per-image generator, same model, same images.

    python bench/autolabel.py --model sam_vit_b --images 3 --points-per-side 16

The reference is segment-anything's own `SamAutomaticMaskGenerator` (the PyPI package of the
test extra, torchvision stood in as in bench/official.py): one image at a time, one point
batch at a time, every mask upscaled to full resolution before filtering. Ours is
`operators.mask_generator.MaskGenerator` with several images per encoder call, prompts of
several crops per decoder call and upscaling only after the IoU filter. Both load the same
seeded random weights; the mask hypernetworks' last layer is scaled (x40, as in the parity
tests) so that random weights give masks with structure, and the IoU head's bias is shifted so
that about 40% of the masks pass the default IoU filter (0.88), as with a real checkpoint.
Otherwise the generator's defaults.

Prints JSON: images/s and masks/s of both, their ratio, and the fraction of the reference's
masks that we output identically (same RLE), and at IoU >= 0.9.
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

from bench.official import OFFICIAL_NAMES, paired_models  # noqa: E402
from operators.config import GeneratorConfig  # noqa: E402
from operators.everything.grid import MaskGenerator  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402


def images(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """uint8 HxWx3 images with smooth structure (blocks of colour plus noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        blocks = rng.integers(0, 256, (h // 40 + 1, w // 40 + 1, 3)).repeat(40, 0).repeat(40, 1)
        noise = rng.integers(-12, 13, (h, w, 3))
        out.append(np.clip(blocks[:h, :w] + noise, 0, 255).astype(np.uint8))
    return out


def agreement(ref: list[list[dict]], got: list[list[dict]]) -> tuple[float, float]:
    """Fractions of reference masks that we output identically, and with IoU >= 0.9."""
    same = close = total = 0
    for r_anns, g_anns in zip(ref, got, strict=True):
        total += len(r_anns)
        ours = {a["segmentation"]["counts"]: a for a in g_anns}
        g_rles = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}
                  for a in g_anns]
        for a in r_anns:
            if a["segmentation"]["counts"] in ours:
                same += 1
                close += 1
            elif g_rles:
                r = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}]
                close += bool(mask_utils.iou(r, g_rles, [0] * len(g_rles)).max() >= 0.9)
    return same / max(total, 1), close / max(total, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam_tiny", choices=["sam_tiny", *OFFICIAL_NAMES])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--stability-score-thresh", type=float, default=0.95)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--box-nms-thresh", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=4,
                    help="model.batch_size: crops per encoder call")
    ap.add_argument("--decoder-batch-size", type=int, default=64,
                    help="prompts per decoder call (SAM's decoder: ~25 MB each in fp32)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="both generators run there (the official one in fp32, as it does)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="ours only (the identical-mask figures assume fp32)")
    args = ap.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    sa, ours, theirs = paired_models(args.model, args.seed)
    ours, theirs = ours.to(device), theirs.to(device)
    ims = images(args.images, args.height, args.width, args.seed)
    # Random weights predict IoUs anywhere; shift the IoU head so that, as with a real
    # checkpoint at the default 0.88, about 40% of the grid's masks pass the IoU filter.
    predictor = sa.SamPredictor(theirs)
    predictor.set_image(ims[0])
    grid = sa.utils.amg.build_point_grid(args.points_per_side) * [[args.width, args.height]]
    pts = torch.as_tensor(predictor.transform.apply_coords(grid, (args.height, args.width)))
    ious = []
    with torch.inference_mode():
        for start in range(0, len(pts), 64):  # the decoder needs ~25 MB a prompt in fp32
            chunk = pts[start : start + 64, None, :].float().to(device)
            labels = torch.ones(len(chunk), 1, dtype=torch.int, device=device)
            ious.append(predictor.predict_torch(chunk, labels,
                                                multimask_output=True)[1].flatten().cpu())
    shift = 0.88 - float(torch.quantile(torch.cat(ious).float(), 0.6))
    for model in (ours, theirs):
        model.mask_decoder.iou_prediction_head.layers[-1].bias.data += shift
    settings = GeneratorConfig(points_per_side=args.points_per_side,
                               stability_score_thresh=args.stability_score_thresh,
                               crop_n_layers=args.crop_n_layers,
                               box_nms_thresh=args.box_nms_thresh,
                               decoder_batch_size=args.decoder_batch_size)

    # The official generator, one image at a time
    reference = sa.SamAutomaticMaskGenerator(theirs, output_mode="coco_rle",
                                             **settings.settings(one_pass=False))
    _sync(device)
    start = time.perf_counter()
    ref = [reference.generate(im) for im in ims]
    _sync(device)
    t_ref = time.perf_counter() - start

    # Ours, all images in one call
    generator = MaskGenerator(ours, settings, batch_size=args.batch_size)
    _sync(device)
    start = time.perf_counter()
    with autocast(device, args.precision):
        got = generator.generate(ims)
    _sync(device)
    t_ours = time.perf_counter() - start

    same, close = agreement(ref, got)
    n_ref, n_ours = sum(map(len, ref)), sum(map(len, got))
    print(json.dumps({
        "bench": "autolabel", "model": args.model, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "precision_ours": args.precision, "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "images": len(ims),
        "image_hw": [args.height, args.width], "settings": settings.settings(one_pass=False),
        "batch_size": args.batch_size,
        "decoder_batch_size": args.decoder_batch_size,
        "official": {"seconds": round(t_ref, 2), "images_per_s": round(len(ims) / t_ref, 4),
                     "masks": n_ref, "masks_per_s": round(n_ref / t_ref, 2)},
        "ours": {"seconds": round(t_ours, 2), "images_per_s": round(len(ims) / t_ours, 4),
                 "masks": n_ours, "masks_per_s": round(n_ours / t_ours, 2)},
        "speedup": round(t_ref / t_ours, 3),
        "identical_masks": round(same, 4), "masks_iou_ge_0.9": round(close, 4),
    }, indent=1))


if __name__ == "__main__":
    main()
