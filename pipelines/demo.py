"""`samdata demo` (`make demo`): the whole loop on embedded defaults, local Ray, local folders.

1. a sample corpus (flat shapes with exact masks; held out from the shipped model's training);
2. `autolabel` with the shipped `sam_demo` checkpoint;
3. a contact sheet of its masks (PNG);
4. `evaluate proposals` (AR against the exact masks) and `evaluate box` (mIoU), the shipped
   weights beside random ones (autolabel runs again with random weights for that);
5. `embed` with the shipped model as teacher, `distill` stage 1 of `mobile_sam_demo` for a
   short run, and `evaluate agreement` of that student with its teacher.

Each step prints its own summary; the demo ends with a table of the numbers and the files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from models.registry import shipped_checkpoint
from operators.dataset.maskset import iter_rows
from operators.dataset.overlay import dataset_sheet
from operators.shards.sample import write_sample_corpus

from .autolabel import run_autolabel
from .config import AutolabelConfig, DistillConfig, EmbedConfig, EvaluateConfig, parse_config
from .distill import run_distill
from .embed import run_embed
from .evaluate import run_evaluate

TEACHER = "sam_demo"
STUDENT = "mobile_sam_demo"
SHIPPED, RANDOM = f"{TEACHER} (shipped)", f"{TEACHER} (random weights)"  # report row names
# The held-out corpus: seed 0 (the shipped model trained on seed 1), the training's kind of
# image (sizes, shapes, grain, the background annotated as a region).
CORPUS = dict(shards=2, images_per_shard=12, seed=0, min_side=192, max_side=384, max_shapes=6,
              texture=4.0, background=True)
# Everything mode: a 16x16 grid (SAM's 32x32 is 4x the decoder work for the same shapes) and
# filters for a 0.5M-parameter model, whose IoU head is less sure than SAM's. Measured on 8
# held-out images (3.4 masks each, background included): SAM's 0.88/0.95 keep 1.5 masks an
# image and find 44% of the masks at IoU >= 0.75; 0.6/0.8 keep 6.0 and find 89%.
GENERATOR = {"points_per_side": 16, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.8}
STAGE1_STEPS = 150


@dataclass
class DemoSummary:
    """The numbers and files of one demo run (printed as a table and one JSON line)."""

    weights: str
    sha256: str
    numbers: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        n = self.numbers
        lines = [
            f"samdata demo: done in {self.seconds:.0f} s with the shipped weights {self.weights} "
            f"(sha256 {self.sha256[:12]}...)",
            f"  autolabel: {n['autolabel_images']} images, {n['autolabel_masks']} masks",
            f"  proposals vs exact masks: AR@100 {n['ar100']:.3f} shipped weights, "
            f"{n['ar100_random']:.3f} random weights",
            f"  box-prompted mIoU: {n['box_miou']:.1f} shipped weights, "
            f"{n['box_miou_random']:.1f} random weights",
            f"  distilled {STUDENT} ({n['student_steps']} steps) vs its teacher {TEACHER}: "
            f"box agreement mIoU {n['agreement_miou']:.1f}",
        ]
        lines += [f"  {name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"weights": self.weights, "sha256": self.sha256, "numbers": self.numbers,
                "files": self.files, "seconds": round(self.seconds, 1)}


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _show(summary: Any) -> None:
    print(summary.text(), flush=True)


def _overall(report: Any, row: str, part: str = "box") -> float:
    """The 'all' mIoU of `row` in an evaluate report (box or agreement)."""
    return float(report.results[row][part]["miou_all"])


def run_demo(out: str, cpus: int | None = None,
             say: Callable[[str], None] = _step) -> DemoSummary:
    """Run the loop of the module docstring under the folder `out`; return its summary.
    Raises RuntimeError naming the step that did not finish."""
    start = time.perf_counter()
    weights, sha = shipped_checkpoint(TEACHER)
    teacher = {"name": TEACHER, "checkpoint": weights, "sha256": sha}
    ray = {"num_cpus": cpus or os.cpu_count()}
    summary = DemoSummary(weights=weights, sha256=sha)
    path = {k: os.path.join(out, k) for k in (
        "corpus", "labels", "labels-random", "contact-sheet.png", "proposals", "box",
        "embeddings", "distill", "agreement")}

    # 1. The sample corpus (kept between runs: it depends only on CORPUS)
    say("1/5 sample corpus")
    if not os.path.isdir(path["corpus"]):
        write_sample_corpus(path["corpus"], **CORPUS)
    print(f"{CORPUS['shards']} SA-1B-format shards of {CORPUS['images_per_shard']} images "
          f"(flat shapes on gradients, exact masks in their json) in {path['corpus']}")

    # 2. Everything-mode masks with the shipped model
    say(f"2/5 samdata autolabel ({TEACHER}, shipped weights)")
    labels = run_autolabel(parse_config({
        "input": {"urls": [path["corpus"]]}, "output": {"path": path["labels"]},
        "model": teacher, "generator": GENERATOR, "ray": ray}, AutolabelConfig))
    _show(labels)
    if not labels.complete:
        raise RuntimeError(f"autolabel left shards unfinished: {labels.shards_unfinished}")

    # 3. The masks drawn on their images
    say("3/5 contact sheet")
    sheet, shown, drawn = dataset_sheet(labels.output, count=8)
    Image.fromarray(sheet).save(path["contact-sheet.png"])
    ok = [len(r["annotations"] or []) for r in iter_rows(
        labels.output, columns=("status", "annotations")) if r["status"] == "ok"]
    images, masks = len(ok), sum(ok)  # the dataset's, whichever run wrote them
    print(f"wrote {path['contact-sheet.png']}: {shown} images with {drawn} masks drawn "
          f"({masks} masks in all {images} images)")

    # 4. The labels and the model against the exact masks, beside random weights' labels
    say("4/5 samdata evaluate proposals, samdata evaluate box (shipped vs random weights)")
    random_labels = run_autolabel(parse_config({
        "input": {"urls": [path["corpus"]]}, "output": {"path": path["labels-random"]},
        "model": {"name": TEACHER}, "generator": GENERATOR, "ray": ray}, AutolabelConfig))
    _show(random_labels)
    common = {"evaluation": {"all": True}, "ray": ray}
    proposals = run_evaluate(parse_config({
        "protocol": "proposals",
        "labels": {SHIPPED: labels.output, RANDOM: random_labels.output},
        "output": {"path": path["proposals"]}, **common}, EvaluateConfig))
    _show(proposals)
    box = run_evaluate(parse_config({
        "protocol": "box", "input": {"urls": [path["corpus"]]},
        "models": [dict(teacher, label=SHIPPED), {"name": TEACHER, "label": RANDOM}],
        "output": {"path": path["box"]}, **common}, EvaluateConfig))
    _show(box)

    # 5. A student distilled from the shipped model, and how well it agrees with it
    say(f"5/5 samdata embed -> samdata distill (stage 1, {STUDENT}) -> samdata evaluate "
        f"agreement")
    embedded = run_embed(parse_config({
        "input": {"urls": [path["corpus"]]}, "model": teacher, "ray": ray,
        "output": {"path": path["embeddings"], "include_image": True}}, EmbedConfig))
    _show(embedded)
    if not embedded.complete:
        raise RuntimeError(f"embed left shards unfinished: {embedded.shards_unfinished}")
    distilled = run_distill(parse_config({
        "stage": 1,
        "data": {"embeddings": embedded.output, "val_shards": 1, "shuffle_buffer": 32},
        "teacher": teacher, "student": {"name": STUDENT},
        "stage1": {"batch_size": 8, "steps": STAGE1_STEPS, "lr": 3.0e-3, "min_lr": 1.0e-5,
                   "warmup_epochs": 0.5, "epochs": 10},
        "validation": {"every": STAGE1_STEPS, "images": 12, "grid": 4},
        "compute": {"workers": 1, "use_gpu": False, "cpus_per_worker": 1.0, "log_every": 50},
        "output": {"path": path["distill"], "name": f"{STUDENT}-stage1",
                   "checkpoint_every": STAGE1_STEPS}, "ray": ray}, DistillConfig))
    _show(distilled)
    agreement = run_evaluate(parse_config({
        "protocol": "agreement", "input": {"urls": [path["corpus"]]},
        "models": [{"name": STUDENT, "checkpoint": distilled.checkpoint}],
        "reference": teacher, "output": {"path": path["agreement"]}, **common},
        EvaluateConfig))
    _show(agreement)

    ar = proposals.results[SHIPPED]["proposals"]
    summary.numbers = {
        "autolabel_images": images, "autolabel_masks": masks,
        "ar10": ar["AR@10"], "ar100": ar["AR@100"],
        "ar100_random": proposals.results[RANDOM]["proposals"]["AR@100"],
        "box_miou": _overall(box, SHIPPED),
        "box_miou_random": _overall(box, RANDOM),
        "student_steps": distilled.steps,
        "agreement_miou": _overall(agreement, STUDENT, "agreement"),
    }
    summary.files = {"contact sheet": path["contact-sheet.png"],
                     "labels": labels.output,
                     "reports": ", ".join(os.path.join(path[k], "results.md")
                                          for k in ("proposals", "box", "agreement")),
                     "student": distilled.checkpoint}
    summary.seconds = time.perf_counter() - start
    return summary


def print_demo(summary: DemoSummary) -> None:
    print("\n" + summary.text())
    print(json.dumps(summary.as_dict()))
