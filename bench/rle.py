"""Per-mask RLE work of everything mode: today's host path vs the batched run-length path.

    python bench/rle.py                        # 100 masks of 1500x2250 an image, on the CPU
    python bench/rle.py --threads 1            # as in a 1-CPU Ray worker
    python bench/rle.py --device cuda --images 5

Each image has `--masks` masks, each a few random filled ellipses, as the mask generator keeps
them: once with masks of the whole image, once with masks of a crop (the last crop of layer 1,
placed at an offset in the image). Per image, side by side:
  today: masks to the host, then per mask uncrop (pad to the image), area (sum) and
    pycocotools' encode (`geometry.mask_to_rle`);
  device: `runlength.masks_to_runs` (change points, areas, boxes; one copy back);
  strings: `coco_rle.runs_to_annotations` (counts and COCO strings, numpy on the host).
Both give the same RLE strings and areas (checked). Prints one JSON object: milliseconds per
image of each part (median over the images), and the bytes that come back to the host per mask.
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

from operators.everything.coco_rle import runs_to_annotations  # noqa: E402
from operators.everything.geometry import crop_boxes, mask_to_rle, uncrop_masks  # noqa: E402
from operators.everything.runlength import masks_to_runs  # noqa: E402


def ellipse_masks(n: int, hw: tuple[int, int], seed: int, device: torch.device) -> torch.Tensor:
    """bool NxHxW masks, each the union of 1-4 random filled ellipses (axes 2-25% of a side)."""
    h, w = hw
    rng = np.random.default_rng(seed)
    masks = torch.zeros(n, h, w, dtype=torch.bool, device=device)
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ay, ax = rng.uniform(0.02, 0.25) * h, rng.uniform(0.02, 0.25) * w
            y0, y1 = max(0, int(cy - ay)), min(h, int(cy + ay) + 1)
            x0, x1 = max(0, int(cx - ax)), min(w, int(cx + ax) + 1)
            ys = torch.arange(y0, y1, device=device, dtype=torch.float32)[:, None]
            xs = torch.arange(x0, x1, device=device, dtype=torch.float32)[None, :]
            masks[i, y0:y1, x0:x1] |= ((ys - cy) / ay) ** 2 + ((xs - cx) / ax) ** 2 <= 1
    return masks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def today(masks: torch.Tensor, crop_box: list[int], orig_hw: tuple[int, int]) -> list[dict]:
    """The generator's path before the run-length stage: every mask to the host, then one by
    one."""
    host = masks.cpu()
    out = []
    for j in range(len(host)):
        mask = uncrop_masks(host[j : j + 1], crop_box, orig_hw)[0]
        out.append({"segmentation": mask_to_rle(mask.numpy()), "area": int(mask.sum())})
    return out


def run_case(name: str, crop_box: list[int], orig_hw: tuple[int, int], args: argparse.Namespace,
             device: torch.device) -> dict:
    """Median ms per image of the three parts over `args.images` images of `args.masks` masks
    (the median: a busy machine slows some images down)."""
    x0, y0, x1, y1 = crop_box
    times: dict[str, list[float]] = {"today": [], "device": [], "strings": []}
    back_bytes = n_masks = 0
    for i in range(args.images):
        masks = ellipse_masks(args.masks, (y1 - y0, x1 - x0), args.seed + i, device)
        _sync(device)
        start = time.perf_counter()
        ref = today(masks, crop_box, orig_hw)
        times["today"].append(time.perf_counter() - start)

        _sync(device)
        start = time.perf_counter()
        runs = masks_to_runs(masks, crop_box, orig_hw)
        times["device"].append(time.perf_counter() - start)
        start = time.perf_counter()
        got = runs_to_annotations(runs)
        times["strings"].append(time.perf_counter() - start)

        for r, g in zip(ref, got, strict=True):
            if r["segmentation"] != g["segmentation"] or r["area"] != g["area"]:
                raise RuntimeError(f"{name}: the run-length path differs from today's")
        back_bytes += sum(a.nbytes for a in (runs.changes, runs.offsets, runs.areas, runs.boxes))
        n_masks += len(got)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    new = 1000 * float(np.median(np.add(times["device"], times["strings"])))
    return {
        "case": name, "crop_box": crop_box, "mask_hw": [y1 - y0, x1 - x0],
        "today_ms": round(ms["today"], 1), "new_device_ms": round(ms["device"], 1),
        "new_strings_ms": round(ms["strings"], 1), "new_total_ms": round(new, 1),
        "speedup": round(ms["today"] / new, 2),
        "bytes_back_per_mask": round(back_bytes / n_masks),
        "mask_bytes": (y1 - y0) * (x1 - x0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--masks", type=int, default=100, help="masks per image")
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--width", type=int, default=2250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the masks are (today: copied off it)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default torch's; 1 as in a 1-CPU Ray worker, and "
                         "steadier on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    orig_hw = (args.height, args.width)

    # Warm up both paths (first calls allocate and load kernels)
    warm = ellipse_masks(2, (64, 96), args.seed, device)
    today(warm, [0, 0, 96, 64], (64, 96))
    runs_to_annotations(masks_to_runs(warm))

    boxes, _ = crop_boxes(orig_hw, 1, 512 / 1500)
    results = [run_case("image", boxes[0], orig_hw, args, device),
               run_case("crop", boxes[-1], orig_hw, args, device)]
    print(json.dumps({
        "bench": "rle", "date": date.today().isoformat(), "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "images": args.images, "masks_per_image": args.masks, "image_hw": list(orig_hw),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
