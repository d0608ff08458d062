"""SAM 3 beside SAM and SAM 2.1: vision backbone speed, and concept labeling with 1, 10 and 80
concepts (issue 29).

    python bench/sam3_speed.py --part backbone            # 1 image each, this device
    python bench/sam3_speed.py --part backbone --device cuda --precision bf16 --images 8 \\
        --warmup 2 --reps 5
    python bench/sam3_speed.py --part concepts            # sam3_tiny_test, 4 images
    python bench/sam3_speed.py --part concepts --device cuda --precision bf16 \\
        --concept-model sam3 --images 8

backbone: SAM 3's `embed_images` (the ViT trunk at 1008 px and the detector's FPN neck: what
concept labeling runs per image) beside `sam_vit_h`'s and `sam2_1_hiera_l`'s image encoders at
1024 (SAM 2.1 with its high-res maps), each measured as bench/sam2_speed.py's encoders part
does: `--images` prepared inputs already on the device a call, `--warmup` untimed calls, then
`--reps` timed calls; initialiser weights (speed does not depend on them). Each model's
images/s and its speed as a multiple of sam_vit_h's, all from the same run: only the ratios
carry to another machine, the seconds are this device's.

concepts: `ConceptGenerator.generate(images, encode=False)` (the labeler actor's call: the
COCO strings are the writer's) of `--concept-model` with seeded weights (`--seed`) and a test
vocabulary of our own (tests/sam3_vocab.py; speed does not depend on the token ids), for each
count of `--concepts` (the first N of COCO's 80 category names). Measured apart:
- text: `encode_concepts` of the N names, once per job (the generator does it when built,
  never per image), `--reps` timed calls after one untimed one;
- per image: the call's time split into the vision backbone (`embed_images`, once per image,
  batches of `--batch-size`), the detector (`detect`: fusion encoder, decoder, scoring and mask
  head for each (image, concept) pair, `--pairs-per-batch` pairs a call) and the masks (the
  rest: thresholding at `--score-threshold`, full-size masks, run-length encoding), timed
  around the model's two methods within the same calls (one untimed call first, then `--reps`
  timed calls over the same images).
The backbone's share per image stays put as N grows; the detector's grows with the N pairs an
image has; the text's is not in the per-image time at all. The default threshold, 0.3, is
under the official 0.5 so that seeded random weights (scores ~0.35-0.40 on sam3_tiny_test)
give instances and the mask work is measured; its time is reported apart from the detector's.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import build_model  # noqa: E402
from operators.runtime.device import autocast  # noqa: E402

BACKBONES = ("sam3", "sam_vit_h", "sam2_1_hiera_l")

# COCO's 80 category names, in the order of their ids
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_sam3_backbone(name: str, device: torch.device, precision: str, images: int,
                        warmup: int, reps: int) -> dict:
    """images/s of a SAM 3 model's `embed_images` on `images` prepared inputs a call (the
    sam2_speed.bench_encoder measurement; SAM 3's method takes no sizes)."""
    model = build_model(name).to(device).eval()
    rng = np.random.default_rng(0)
    prepared, _ = model.prepare_image(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    pixels = torch.from_numpy(np.ascontiguousarray(prepared)).permute(2, 0, 1)[None]
    pixels = pixels.repeat(images, 1, 1, 1).to(device)
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(warmup):
            model.embed_images(pixels)
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            model.embed_images(pixels)
        _sync(device)
        seconds = (time.perf_counter() - start) / reps
    params = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.backbone.vision_backbone.parameters())
    return {"model": name, "params_m": round(params / 1e6, 1),
            "vision_params_m": round(vision / 1e6, 1), "input": model.image_size,
            "high_res_features": False, "seconds_per_call": round(seconds, 3),
            "encoder_images_per_s": round(images / seconds, 4)}


def backbone(args: argparse.Namespace, device: torch.device) -> dict:
    from bench.sam2_speed import bench_encoder

    rows = []
    for name in args.models:
        bench = bench_sam3_backbone if name.startswith("sam3") else bench_encoder
        rows.append(bench(name, device, args.precision, args.images, args.warmup, args.reps))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        _free(device)  # one model on the device at a time
    ref = next((r["encoder_images_per_s"] for r in rows if r["model"] == "sam_vit_h"), None)
    for r in rows:
        r["x_sam_vit_h"] = round(r["encoder_images_per_s"] / ref, 2) if ref else None
    return {"images_per_call": args.images, "warmup": args.warmup, "reps": args.reps,
            "results": rows}


class Stopwatch:
    """A callable's total seconds over its calls (the device waited for on both sides)."""

    def __init__(self, fn: Callable, device: torch.device) -> None:
        self.fn, self.device, self.seconds, self.calls = fn, device, 0.0, 0

    def __call__(self, *a, **kw):
        _sync(self.device)
        start = time.perf_counter()
        out = self.fn(*a, **kw)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


@contextmanager
def timed_methods(model: torch.nn.Module, names: tuple[str, ...],
                  device: torch.device) -> Iterator[dict[str, Stopwatch]]:
    """Time `model`'s methods `names` while inside (instance attributes shadow them)."""
    watches = {n: Stopwatch(getattr(model, n), device) for n in names}
    for n, w in watches.items():
        object.__setattr__(model, n, w)
    try:
        yield watches
    finally:
        for n in names:
            object.__delattr__(model, n)


def concept_run(model, concepts: list[str], ims: list[np.ndarray], args: argparse.Namespace,
                device: torch.device) -> dict:
    """One job of N concepts over `ims`: text once, then the per-image split."""
    from operators.everything.concepts import ConceptGenerator

    # Text: once per job
    with torch.inference_mode(), autocast(device, args.precision):
        model.encode_concepts(concepts)
        text_times = []
        for _ in range(args.reps):
            _sync(device)
            start = time.perf_counter()
            model.encode_concepts(concepts)
            _sync(device)
            text_times.append(time.perf_counter() - start)
        generator = ConceptGenerator(model, concepts, score_threshold=args.score_threshold,
                                     batch_size=args.batch_size,
                                     pairs_per_batch=args.pairs_per_batch)
        generator.generate(ims[:1], encode=False)  # untimed

        # Per image: the whole call, and within it the backbone and the detector
        instances = 0
        with timed_methods(model, ("embed_images", "detect"), device) as watch:
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.reps):
                instances += sum(map(len, generator.generate(ims, encode=False)))
            _sync(device)
            total = time.perf_counter() - start
    n_images = len(ims) * args.reps
    pairs = n_images * len(concepts)
    bb, det = watch["embed_images"].seconds, watch["detect"].seconds
    return {
        "concepts": len(concepts),
        "text_ms_once_per_job": round(1e3 * statistics.median(text_times), 2),
        "images_per_s": round(n_images / total, 4),
        "ms_per_image": round(1e3 * total / n_images, 2),
        "backbone_ms_per_image": round(1e3 * bb / n_images, 2),
        "detector_ms_per_image": round(1e3 * det / n_images, 2),
        "masks_ms_per_image": round(1e3 * (total - bb - det) / n_images, 2),
        "detector_ms_per_pair": round(1e3 * det / pairs, 3),
        "detector_calls": watch["detect"].calls,
        "instances_per_image": round(instances / n_images, 1),
        "masks_ms_per_instance": round(1e3 * (total - bb - det) / max(instances, 1), 3),
    }


def concepts(args: argparse.Namespace, device: torch.device) -> dict:
    from bench.autolabel import images as bench_images
    from tests.sam3_vocab import write_vocab

    if max(args.concepts) > len(COCO_NAMES):
        raise SystemExit(f"expected at most {len(COCO_NAMES)} concepts, got "
                         f"{max(args.concepts)}")
    model = build_model(args.concept_model, seed=args.seed).to(device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.use_vocabulary(write_vocab(Path(tmp) / "bpe_test_vocab.txt.gz"))
    ims = bench_images(args.images, args.height, args.width, args.seed)
    rows = []
    for n in args.concepts:
        rows.append(concept_run(model, list(COCO_NAMES[:n]), ims, args, device))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    first, last = rows[0], rows[-1]
    return {
        "model": args.concept_model, "seed": args.seed, "images": len(ims),
        "image_hw": [args.height, args.width], "batch_size": args.batch_size,
        "pairs_per_batch": args.pairs_per_batch, "score_threshold": args.score_threshold,
        "reps": args.reps, "results": rows,
        # what grows from the fewest to the most concepts, per image (ms)
        "growth_ms_per_image": {
            "concepts": [first["concepts"], last["concepts"]],
            "backbone": round(last["backbone_ms_per_image"] - first["backbone_ms_per_image"], 2),
            "detector": round(last["detector_ms_per_image"] - first["detector_ms_per_image"], 2),
            "masks": round(last["masks_ms_per_image"] - first["masks_ms_per_image"], 2),
            "text": 0.0,  # encode_concepts runs once per job, in no image's time
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["backbone", "concepts"],
                    choices=["backbone", "concepts"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own, one per core)")
    ap.add_argument("--models", nargs="+", default=list(BACKBONES), help="backbone part")
    ap.add_argument("--images", type=int, default=None,
                    help="backbone: images a call (default 1); concepts: images labelled "
                    "(default 4)")
    ap.add_argument("--warmup", type=int, default=0, help="backbone: untimed calls first")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed calls (default: backbone 1, concepts 2)")
    ap.add_argument("--concept-model", default="sam3_tiny_test")
    ap.add_argument("--concepts", nargs="+", type=int, default=[1, 10, 80])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=4, help="concepts: images a backbone call")
    ap.add_argument("--pairs-per-batch", type=int, default=16)
    ap.add_argument("--score-threshold", type=float, default=0.3,
                    help="random weights: the official 0.5 would keep nothing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = {"bench": "sam3", "date": date.today().isoformat(), "device": str(device),
           "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or platform.machine()),
           "cores": os.cpu_count(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "precision": args.precision,
           "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    start = time.perf_counter()
    if "backbone" in args.part:
        sub = argparse.Namespace(**{**vars(args), "images": args.images or 1,
                                    "reps": args.reps or 1})
        out["backbone"] = backbone(sub, device)
    if "concepts" in args.part:
        sub = argparse.Namespace(**{**vars(args), "images": args.images or 4,
                                    "reps": args.reps or 2})
        out["concepts"] = concepts(sub, device)
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
