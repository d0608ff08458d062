"""Everything mode at SA-1B resolution: the per-mask host work of the auto-labeling actor's call,
before and after the masks stay on the device (change points only come back), one run side by
side.

    python bench/autolabel_hostwork.py                         # CPU: 2 images 1500x2250, 1 thread
    python bench/autolabel_hostwork.py --device cuda --images 8 --repeats 3

Model: `sam_tiny` with seeded random weights whose mask hypernetworks are scaled x40 (as in the
parity tests), so masks have structure; a 6x6 grid with the IoU, stability and NMS filters off
keeps all 108 masks an image (about the ~100 of an SA-1B image after NMS). Images: structured
uint8 (blocks of colour plus noise), 1500x2250 by default.

Three generators over the same images, each round in this order, after one untimed warm-up each:
- before: the generator as it was (kept callable here, `Before`): every kept mask copied to the
  host as bool hxw, then per mask uncrop (pad to the image), area (sum) and pycocotools' RLE;
  the old stability score (torch bool sums) and `masks_to_boxes`;
- actor: `MaskGenerator.generate(images, encode=False)`, what the actor calls now: masks
  run-length encoded where they are (`masks_to_runs`), only change points, areas and boxes
  copied back; annotations carry counts;
- writer: `coco_rle.finish_annotations` on the actor's output, what the writer stage runs on
  CPU workers (timed on its own);
and once more `generate(images)` (encode=True) to check that all three give the same dicts.

What "host ms" measures (per image): the wall time of the call's per-mask host stages, the
work the actor's one thread does with kept masks that the device cannot do for it:
- before: the masks' copy to the host (the `.cpu()` in `_filter`; free on the CPU, where it is
  the same memory), `_crop_nms` (NMS, gathering host masks) and `_merge` (NMS across crops,
  uncrop, sum, RLE, dicts);
- after: `_crop_nms` and `_merge` (NMS, gathering change points, counts, dicts). The copy back
  of the change points happens inside `masks_to_runs` and is counted there (`runs_ms`).
On a GPU each timed stage starts and ends with a device sync, so it holds its own device work
(the NMS IoU matrices, about the same in both). On the CPU every stage is host work, including
what a GPU would do (upscaling, stability, thresholds: `filter_ms`; the run-length kernels:
`runs_ms`); those are reported apart and the images/s figures hold them all. Per mask and
"at 100 masks" figures scale the per-image ones by the masks an image actually kept.

Prints one JSON object: per generator ms per image of each stage (mean over the rounds), host
ms per image and at 100 masks, ms and images/s of the whole call (median over the rounds),
bytes copied back per mask, and whether the outputs were identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import operators.everything.grid as grid  # noqa: E402
from bench.autolabel import images as structured_images  # noqa: E402
from models import build_model  # noqa: E402
from operators.config import GeneratorConfig  # noqa: E402
from operators.everything.coco_rle import finish_annotations  # noqa: E402
from operators.everything.geometry import (  # noqa: E402
    mask_to_rle,
    masks_to_boxes,
    near_crop_edge,
    uncrop_masks,
)
from operators.everything.grid import MaskGenerator  # noqa: E402
from operators.everything.nms import box_area, nms  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402


def _old_stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """The stability score as it was: torch bool sums (int32 row sums, then int32)."""
    inter = (logits > threshold + offset).sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)
    union = (logits > threshold - offset).sum(-1, dtype=torch.int32).sum(-1, dtype=torch.int32)
    return inter / union


class Before(MaskGenerator):
    """The point-grid generator as it was before the run-length path (its `_filter`,
    `_crop_nms` and `_merge`, small-region cleanup left out), so that it stays callable for
    this side-by-side run. `times` collects the copy back of the masks."""

    def __init__(self, *args, times: dict[str, list[float]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.generator.min_mask_region_area > 0:
            raise ValueError(f"expected min_mask_region_area 0 for the old path here, got "
                             f"{self.generator.min_mask_region_area}")
        self.times = times

    def _filter(self, crop, low_res, iou, points) -> None:
        s, model = self.generator, self.model
        masks = crop.__dict__.setdefault("old_masks", [])
        per_prompt = low_res.shape[1]
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
        points = points.repeat_interleave(per_prompt, dim=0)
        if s.pred_iou_thresh > 0:
            kept = (iou > s.pred_iou_thresh).cpu().nonzero()[:, 0]
            kept_d = kept.to(self.device, non_blocking=True)
            low_res, iou, points = low_res[kept_d], iou[kept_d], points[kept]
        orig_box = [0, 0, crop.orig_hw[1], crop.orig_hw[0]]
        for start in range(0, len(iou), s.upscale_batch_size):
            sl = slice(start, start + s.upscale_batch_size)
            logits = model.postprocess_masks(low_res[sl, None], crop.hw)[:, 0]
            stab = _old_stability_score(logits, model.mask_threshold, s.stability_score_offset)
            keep = (stab >= s.stability_score_thresh if s.stability_score_thresh > 0
                    else torch.ones_like(stab, dtype=torch.bool))
            idx = keep.cpu().nonzero()[:, 0]
            idx_d = idx.to(self.device, non_blocking=True)
            binary = logits[idx_d] > model.mask_threshold
            boxes = masks_to_boxes(binary)
            inner = (~near_crop_edge(boxes, crop.box, orig_box)).cpu().nonzero()[:, 0]
            inner_d = inner.to(self.device, non_blocking=True)
            idx, idx_d = idx[inner], idx_d[inner_d]
            selected = binary[inner_d]
            _sync(self.device)
            begin = time.perf_counter()
            masks.append(selected.cpu())  # the copy back: host bool MxhxW
            self.times["copy_back"].append(time.perf_counter() - begin)
            crop.boxes.append(boxes[inner_d])
            crop.iou.append(iou[sl][idx_d])
            crop.stability.append(stab[idx_d])
            crop.points.append(points[sl][idx])

    def _crop_nms(self, crop) -> dict:
        h, w = crop.hw
        masks = crop.__dict__.get("old_masks", [])
        if not masks:
            return {"masks": torch.zeros(0, h, w, dtype=torch.bool),
                    "boxes": torch.zeros(0, 4, dtype=torch.long, device=self.device),
                    "iou": torch.zeros(0), "stability": torch.zeros(0),
                    "points": torch.zeros(0, 2, dtype=torch.float64), "crop_box": crop.box}
        boxes, iou = torch.cat(crop.boxes), torch.cat(crop.iou)
        keep = nms(boxes.float(), iou, self.generator.box_nms_thresh)
        keep_host = keep.cpu()
        offset = torch.tensor([crop.box[0], crop.box[1]])
        return {"masks": torch.cat(masks)[keep_host],
                "boxes": boxes[keep] + offset.to(boxes.device).repeat(2),
                "iou": iou[keep].cpu(), "stability": torch.cat(crop.stability)[keep].cpu(),
                "points": torch.cat(crop.points)[keep_host] + offset, "crop_box": crop.box}

    def _merge(self, parts: list[dict], orig_hw: tuple[int, int], encode: bool) -> list[dict]:
        s = self.generator
        boxes = torch.cat([p["boxes"] for p in parts])
        crop_of = [k for k, p in enumerate(parts) for _ in range(len(p["boxes"]))]
        order = list(range(len(crop_of)))
        if len(parts) > 1 and crop_of:
            crops = torch.tensor([parts[k]["crop_box"] for k in crop_of], dtype=torch.float,
                                 device=boxes.device)
            order = nms(boxes.float(), 1 / box_area(crops), s.crop_nms_thresh).tolist()
        offsets = np.cumsum([0] + [len(p["boxes"]) for p in parts])
        boxes = boxes.cpu()
        out = []
        for idx in order:
            k = crop_of[idx]
            part, j = parts[k], idx - offsets[k]
            mask = uncrop_masks(part["masks"][j : j + 1], part["crop_box"], orig_hw)[0]
            x0, y0, x1, y1 = (int(v) for v in boxes[idx].tolist())
            cx0, cy0, cx1, cy1 = part["crop_box"]
            out.append({
                "segmentation": mask_to_rle(mask.numpy()),
                "area": int(mask.sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": float(part["iou"][j]),
                "point_coords": [[float(v) for v in part["points"][j].tolist()]],
                "stability_score": float(part["stability"][j]),
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            })
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, name: str, times: dict[str, list[float]], device: torch.device
           ) -> Callable:
    """fn, its wall time (between device syncs) appended to times[name] at each call."""
    def wrapper(*args, **kwargs):
        _sync(device)
        begin = time.perf_counter()
        result = fn(*args, **kwargs)
        _sync(device)
        times[name].append(time.perf_counter() - begin)
        return result
    return wrapper


def model_with_structure(seed: int, device: torch.device) -> torch.nn.Module:
    """sam_tiny with seeded weights, mask hypernetworks x40 (structured masks)."""
    model = build_model("sam_tiny", seed=seed)
    sd = model.state_dict()
    for k in sd:
        if k.startswith("mask_decoder.output_hypernetworks_mlps") and k.endswith("2.weight"):
            sd[k] = sd[k] * 40
    model.load_state_dict(sd)
    return model.eval().to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2, help="images per generate() call")
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--width", type=int, default=2250)
    ap.add_argument("--points-per-side", type=int, default=6)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed rounds (median reported)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: the actor's one CPU thread)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = model_with_structure(args.seed, device)
    # Filters open: every mask of the grid survives (3 per prompt)
    settings = GeneratorConfig(points_per_side=args.points_per_side, pred_iou_thresh=-1,
                               stability_score_thresh=0, box_nms_thresh=1.0,
                               crop_nms_thresh=1.0, crop_n_layers=args.crop_n_layers)
    images = structured_images(args.images, args.height, args.width, args.seed)
    warm = structured_images(1, 200, 300, args.seed + 1)

    times: dict[str, dict[str, list[float]]] = {k: defaultdict(list)
                                                for k in ("before", "actor")}
    before = Before(model, settings, batch_size=4, times=times["before"])
    after = MaskGenerator(model, settings, batch_size=4)
    for name, gen in (("before", before), ("actor", after)):
        for stage in ("_filter", "_crop_nms", "_merge"):
            setattr(gen, stage, _timed(getattr(gen, stage), stage.strip("_"), times[name],
                                       device))
    masks_to_runs = grid.masks_to_runs
    grid.masks_to_runs = _timed(masks_to_runs, "runs", times["actor"], device)

    calls: dict[str, list[float]] = defaultdict(list)
    bytes_back: dict[str, int] = {}
    with torch.inference_mode(), autocast(device, args.precision):
        before.generate(warm)
        after.generate(warm, encode=False)
        for t in times.values():
            t.clear()
        for _ in range(args.repeats):
            _sync(device)
            begin = time.perf_counter()
            ref = before.generate(images)
            _sync(device)
            calls["before"].append(time.perf_counter() - begin)
            begin = time.perf_counter()
            raw = after.generate(images, encode=False)
            _sync(device)
            calls["actor"].append(time.perf_counter() - begin)
            begin = time.perf_counter()
            finished = finish_annotations(raw)
            calls["writer"].append(time.perf_counter() - begin)
        grid.masks_to_runs = masks_to_runs  # untimed from here
        encoded = MaskGenerator(model, settings, batch_size=4).generate(images)
    n_masks = sum(len(a) for a in ref)
    # Of the kept masks: before, the crop's bool pixels; after, the int32 change points (one
    # fewer than the counts) and int64 offset, area and box
    bytes_back["before"] = sum(_crop_bytes(a) for anns in ref for a in anns)
    bytes_back["actor"] = sum(a["segmentation"]["runs"].nbytes - 4 + 8 * 6
                              for anns in raw for a in anns)

    per_image = 1000 / (args.images * args.repeats)  # seconds in total -> ms per image
    masks_per_image = n_masks / args.images
    result: dict = {}
    for name, stages in (("before", ("filter", "copy_back", "crop_nms", "merge")),
                         ("actor", ("filter", "runs", "crop_nms", "merge"))):
        t = times[name]
        ms = {f"{s}_ms": round(sum(t[s]) * per_image, 1) for s in stages}
        host = sum(t["crop_nms"]) + sum(t["merge"]) + sum(t.get("copy_back", []))
        result[name] = {
            **ms,
            "host_ms": round(host * per_image, 1),
            "host_ms_at_100_masks": round(host * per_image * 100 / max(masks_per_image, 1), 1),
            "call_ms": round(1000 * statistics.median(calls[name]) / args.images, 1),
            "images_per_s": round(args.images / statistics.median(calls[name]), 4),
            "bytes_back_per_mask": round(bytes_back[name] / max(n_masks, 1)),
        }
    result["actor"]["note"] = ("filter_ms holds runs_ms; on the CPU both are work a GPU does "
                               "(upscaling, stability, thresholds, run-length kernels)")
    result["writer"] = {
        "finish_ms": round(1000 * statistics.median(calls["writer"]) / args.images, 1),
        "what": "coco_rle.finish_annotations (COCO strings from counts), on a CPU worker",
    }
    print(json.dumps({
        "bench": "autolabel_hostwork", "date": date.today().isoformat(),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "precision": args.precision, "model": "sam_tiny (x40 hypernetworks, seeded)",
        "images": args.images, "image_hw": [args.height, args.width],
        "points_per_side": args.points_per_side, "crop_n_layers": args.crop_n_layers,
        "repeats": args.repeats, "masks_per_image": round(masks_per_image, 1),
        **result,
        "host_ms_ratio": round(result["before"]["host_ms"] / max(result["actor"]["host_ms"],
                                                                 1e-9), 1),
        "speedup_images_per_s": round(result["actor"]["images_per_s"]
                                      / result["before"]["images_per_s"], 2),
        "identical": ref == encoded == finished,
    }, indent=1))


def _crop_bytes(annotation: dict) -> int:
    """Bytes of the bool mask the old path copied back: the crop's pixels."""
    _, _, w, h = annotation["crop_box"]
    return w * h


if __name__ == "__main__":
    main()
