"""The prompted protocols of `samdata evaluate` on images, and the Ray actor that runs them:

- box: every ground-truth instance with area >= 1 prompted with its box (XYWH -> XYXY in
  original pixels), the mask of highest predicted IoU of the 3, IoU with the instance's mask at
  the original size (EfficientViT-SAM's `run_box`).
- points: RITM click simulation (clicks.py): each round adds a click from the last round's
  mask, all clicks so far prompt the model, the mask of highest predicted IoU is kept; the IoU
  after each of `evaluation.clicks` clicks (efficientvit's `run_point`, one run per count: the
  simulation is deterministic, so the rounds of one run give every count).
- agreement: the student and the reference (teacher) on the same prompts, IoU between their
  chosen masks (MobileSAM's protocol with an explicit prompt set): every ground-truth box
  (bucketed by the ground-truth area) and `evaluation.agreement_points` single foreground
  points per image, drawn uniformly over the image from (seed, shard, key) (bucketed by the
  reference mask's area).
Every model answers through its prompter (operators/prompted), so FastSAM is evaluated with its
own box / point selection. IoU conventions: metrics.py.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import (
    ComputeConfig,
    EvaluatedModel,
    EvaluationConfig,
    GeneratorConfig,
    GroundTruthConfig,
    ModelConfig,
)
from ..prompted.prompts import Prompter, PromptSet, image_masks, make_prompt
from ..prompted.segmenter import build_prompter
from ..prompted.sources import xywh_to_xyxy
from ..runtime.batch_size import load_sized_model
from ..runtime.device import autocast
from ..shards.schema import usable_images
from .clicks import Click, next_click
from .ground_truth import instance_masks, load_ground_truth
from .metrics import batched_mask_iou, is_evaluated

PROTOCOLS = ("box", "points", "agreement")


@dataclass
class LoadedModel:
    """A model on the actor's device with its prompter and its autocast precision."""

    name: str
    prompter: Prompter
    device: torch.device
    precision: str

    def autocast(self):
        return autocast(self.device, self.precision)


def box_ious(model: LoadedModel, images: Sequence[np.ndarray],
             instances: Sequence[Sequence[dict]]) -> list[np.ndarray]:
    """Box protocol: uint8 HxWx3 images and each one's ground-truth instances (area >= 1) ->
    per image, float64 K IoUs in [0, 1], instance by instance. The prompts of all the images go
    through the model together."""
    per_image = [[make_prompt(xywh_to_xyxy(inst["bbox"])) for inst in insts]
                 for insts in instances]
    first = np.concatenate([[0], np.cumsum([len(p) for p in per_image])])
    out = [np.zeros(len(insts)) for insts in instances]
    with model.autocast():
        for chunk in model.prompter.iter_masks(images, PromptSet.from_prompts(per_image)):
            local = chunk.index - first[chunk.image]
            h, w = images[chunk.image].shape[:2]
            gt = instance_masks([instances[chunk.image][k] for k in local], h, w)
            ious = batched_mask_iou(chunk.masks, torch.from_numpy(gt).to(chunk.masks.device))
            out[chunk.image][local] = ious.cpu().numpy()
    return out


def click_ious(model: LoadedModel, image: np.ndarray, instances: Sequence[dict],
               clicks: Sequence[int], group: int = 64) -> dict[int, np.ndarray]:
    """Points protocol on one image: {n: float64 K IoUs after n clicks} for each n of `clicks`,
    instance by instance. `group` instances are simulated together (one decoder call per
    round); their masks are held on the host (bool HxW each, ground truth and prediction)."""
    h, w = image.shape[:2]
    rounds = max(clicks)
    out = {n: np.zeros(len(instances)) for n in clicks}
    with model.autocast():
        encoded = model.prompter.encode([image])
        for start in range(0, len(instances), group):
            gt = instance_masks(instances[start : start + group], h, w)  # (G, H, W)
            pred = np.zeros_like(gt)  # the first click is the next click of an empty mask
            history: list[list[Click]] = [[] for _ in gt]
            for n in range(1, rounds + 1):
                for j in range(len(gt)):
                    history[j].append(next_click(gt[j], pred[j], history[j]))
                prompts = [make_prompt(None, [[c.x, c.y] for c in hist],
                                       [int(c.positive) for c in hist]) for hist in history]
                masks, _, _ = image_masks(model.prompter, encoded, (h, w),
                                          PromptSet.from_prompts([prompts]))
                pred = masks.cpu().numpy()
                if n in out:
                    out[n][start : start + len(gt)] = batched_mask_iou(pred, gt)
    return out


def agreement_prompts(seed: int, shard: str, key: str, hw: tuple[int, int], boxes: Sequence,
                      n_points: int) -> list[dict]:
    """The agreement prompt set of one image: a box prompt per ground-truth box (XYXY), then
    `n_points` single foreground points at whole pixels drawn uniformly over the HxW image
    from (seed, shard, key)."""
    h, w = hw
    rng = np.random.default_rng([seed, zlib.crc32(f"{shard}/{key}".encode())])
    xs, ys = rng.integers(0, w, n_points), rng.integers(0, h, n_points)
    return ([make_prompt(box) for box in boxes]
            + [make_prompt(None, [[float(x), float(y)]]) for x, y in zip(xs, ys, strict=True)])


def agreement_ious(student: LoadedModel, reference: LoadedModel, image: np.ndarray,
                   prompts: Sequence[dict], group: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Agreement on one image: the student's and the reference's masks for the same prompts ->
    (float64 P IoUs between them, int64 P areas of the reference's masks)."""
    hw = image.shape[:2]
    ious, areas = np.zeros(len(prompts)), np.zeros(len(prompts), np.int64)
    with student.autocast():
        enc_student = student.prompter.encode([image])
    with reference.autocast():
        enc_reference = reference.prompter.encode([image])
    for start in range(0, len(prompts), group):
        sl = slice(start, start + group)
        ps = PromptSet.from_prompts([prompts[sl]])
        with student.autocast():
            a, _, _ = image_masks(student.prompter, enc_student, hw, ps)
        with reference.autocast():
            b, _, _ = image_masks(reference.prompter, enc_reference, hw, ps)
        ious[sl] = batched_mask_iou(a, b.to(a.device)).cpu().numpy()
        areas[sl] = b.flatten(1).sum(1).cpu().numpy()
    return ious, areas


class PromptedEvaluator:
    """batch (prepared rows in "original" mode with `annotations_json`) -> one row per sample:
    "shard", "key", "image_id", "status", "error", "instances" (ground-truth instances
    evaluated), "results" (JSON text: per model row name, per protocol part, a list of [IoU,
    bucket area] pairs: "box"; "clicks" {n: pairs}; "agreement" (ground-truth boxes, GT area)
    and "agreement_points" (seeded points, reference area)).

    protocol: box | points | agreement; models: the evaluated models (all held by the actor);
    reference: the teacher of `agreement`; evaluation, ground_truth, generator (FastSAM's
    detection settings), compute: the job's config sections. A sample without ground truth
    becomes an error row naming why."""

    def __init__(
        self,
        protocol: str,
        models: Sequence[EvaluatedModel],
        evaluation: EvaluationConfig,
        ground_truth: GroundTruthConfig,
        reference: ModelConfig | None = None,
        generator: GeneratorConfig | None = None,
        compute: ComputeConfig | None = None,
        storage_options: dict | None = None,
        num_threads: int | None = None,
        device: str = "auto",
        gpu_share: float = 1.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"expected a protocol in {PROTOCOLS}, got '{protocol}'")
        if protocol == "agreement" and reference is None:
            raise ValueError("expected a reference model for the agreement protocol, got none")
        compute = compute or ComputeConfig()
        self.protocol, self.evaluation = protocol, evaluation
        self.gt = load_ground_truth(ground_truth, storage_options)

        def load(cfg: ModelConfig, name: str) -> LoadedModel:
            net, dev, precision, batch = load_sized_model(cfg, compute, storage_options,
                                                          num_threads, device, gpu_share)
            prompter = build_prompter(net, batch, multimask=True,
                                      decoder_batch_size=evaluation.decoder_batch_size,
                                      upscale_batch_size=evaluation.upscale_batch_size,
                                      generator=generator)
            return LoadedModel(name, prompter, dev, precision)

        self.models = [load(m, m.row_name) for m in models]
        self.reference = load(reference, "reference") if protocol == "agreement" else None

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["is_end"])
        status, error = batch["status"].copy(), batch["error"].copy()
        counts = np.zeros(n, np.int64)
        results = np.full(n, "{}", dtype=object)
        # Each sample's ground truth; instances of area >= 1 are evaluated
        rows, instances = [], []
        for i in usable_images(batch):
            try:
                found = self.gt(str(batch["key"][i]), str(batch["annotations_json"][i]))
            except ValueError as e:
                status[i], error[i] = "error", f"ground truth: {e}"
                continue
            if found is None:
                status[i], error[i] = "error", "no ground truth for this image"
                continue
            rows.append(i)
            instances.append([inst for inst in found if is_evaluated(inst["area"])])
            counts[i] = len(instances[-1])
        images = [np.ascontiguousarray(batch["pixels"][i]) for i in rows]
        # Every model on the protocol
        per_row: list[dict[str, dict]] = [{} for _ in rows]
        for model in self.models:
            for j, part in enumerate(self._run(model, images, instances, batch, rows)):
                per_row[j][model.name] = part
        for j, i in enumerate(rows):
            results[i] = json.dumps(per_row[j])
        keep = np.flatnonzero(~batch["is_end"].astype(bool))
        return {"shard": batch["shard"][keep], "key": batch["key"][keep],
                "image_id": batch["image_id"][keep], "status": status[keep],
                "error": error[keep], "instances": counts[keep], "results": results[keep]}

    def _run(self, model: LoadedModel, images: list[np.ndarray], instances: list[list[dict]],
             batch: dict[str, np.ndarray], rows: list[int]) -> list[dict]:
        """One model's results on the batch's evaluated images (see the class docstring)."""
        areas = [[inst["area"] for inst in insts] for insts in instances]
        group = self.evaluation.decoder_batch_size
        if self.protocol == "box":
            ious = box_ious(model, images, instances)
            return [{"box": _pairs(i, a)} for i, a in zip(ious, areas, strict=True)]
        out = []
        for image, insts, area, i in zip(images, instances, areas, rows, strict=True):
            if self.protocol == "points":
                by_count = click_ious(model, image, insts, self.evaluation.clicks, group)
                out.append({"clicks": {str(c): _pairs(v, area) for c, v in by_count.items()}})
                continue
            prompts = agreement_prompts(self.evaluation.seed, str(batch["shard"][i]),
                                        str(batch["key"][i]), image.shape[:2],
                                        [xywh_to_xyxy(inst["bbox"]) for inst in insts],
                                        self.evaluation.agreement_points)
            ious, ref_areas = agreement_ious(model, self.reference, image, prompts, group)
            k = len(insts)
            out.append({"agreement": _pairs(ious[:k], area),
                        "agreement_points": _pairs(ious[k:], ref_areas[k:])})
        return out


def _pairs(ious: Sequence[float], areas: Sequence[float]) -> list[list[float]]:
    """[[IoU, area], ...] for JSON."""
    return [[float(i), float(a)] for i, a in zip(ious, areas, strict=True)]
