"""Held-out checks of a student during training, on validation rows (`ingest.TRAIN_FIELDS`
plus "rles"), with the published protocols' conventions (../shared/EVALUATION.md):

- embedding MSE (as the stage-1 loss) and cosine similarity of the valid cells, vs the teacher;
- agreement mIoU (MobileSAM's student-vs-teacher protocol, made explicit as `evaluate
  agreement` does): prompts decoded by the teacher's heads on the teacher embedding and by the
  student on its own, multimask output, the mask of highest predicted IoU of each, IoU at the
  original size; the prompts are a fixed grid x grid of single positive points over each image
  (`val_agreement_miou`) and, where the held-out shards' annotations are read, their boxes
  (`val_agreement_box_miou`);
- box mIoU vs the ground truth (protocol 1): each annotation's box, multimask output, the mask
  of highest predicted IoU, IoU with the annotation's mask at the original size.

SAM 2 (a HighResPromptableModel) decodes with high-res maps beside the embedding: the
student's own (its encoder makes them), the teacher's from the rows (`target_high_res_0/1`,
a corpus embedded with output.high_res). Without them in the rows the teacher's reference
masks cannot be made: a SAM 2 pair then has no agreement mIoUs (box mIoU vs the ground truth
needs the student only), and `val_high_res_mse` (the student's maps vs the teacher's) is
there only with them.

A SAM 3 pair (concept models: text prompts, no point or box per mask) has the trunk map's MSE
and cosine only.

mIoUs are x100 with `MiouAccumulator` (buckets by the reference mask's area: the teacher's
mask for agreement, the annotation's `area` for ground truth).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from models import ConceptModel, HighResPromptableModel, image_embedding

from ..evaluation.metrics import MiouAccumulator, batched_mask_iou
from .ingest import decode_rle
from .losses import masked_cosine, per_image_mse
from .steps import HIGH_RES_TARGETS

_CHUNK = 64  # prompts decoded and upscaled at once (bounds memory at SA-1B sizes)


def grid_points(orig_hw: tuple[int, int], grid: int) -> torch.Tensor:
    """float64 (grid*grid)x2 (x, y): the centres of a grid x grid tiling of the image."""
    h, w = orig_hw
    steps = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    ys, xs = torch.meshgrid(steps * h, steps * w, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def best_masks(model: nn.Module, emb: torch.Tensor, orig_hw: tuple[int, int],
               coords: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               high_res: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One image's prompts (float64 Px2 single positive points, or Px4 XYXY boxes, both in
    original pixels) -> bool PxHxW: `model`'s multimask output of highest predicted IoU for
    each, at the original size. emb: 1xCxhxw; high_res: the image's high-res maps (1xCixHixWi
    each) for a HighResPromptableModel, else None."""
    extra = {} if high_res is None else {"high_res_features": high_res}
    out = []
    count = len(coords if coords is not None else boxes)
    dev = emb.device
    for s in range(0, count, _CHUNK):
        if coords is not None:
            c = model.transform_coords(coords[s:s + _CHUNK], orig_hw).float().to(dev)[:, None]
            labels = torch.ones(c.shape[:2], dtype=torch.long, device=dev)
            logits, iou = model.decode(emb, c, labels, None, None, True, **extra)
        else:
            b = model.transform_boxes(boxes[s:s + _CHUNK], orig_hw).float().to(dev)
            logits, iou = model.decode(emb, None, None, b, None, True, **extra)
        rows = torch.arange(len(iou), device=dev)
        best = logits[rows, iou.argmax(1)][:, None].float()  # (p, 1, h, w)
        out.append((model.postprocess_masks(best, orig_hw)[:, 0] > model.mask_threshold).cpu())
    return torch.cat(out)


def _numpy_batch_to(batch: dict[str, np.ndarray], names: Iterable[str], device: torch.device
                    ) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.ascontiguousarray(np.stack(list(batch[k]))
                                                     if batch[k].dtype == object
                                                     else batch[k])).to(device)
            for k in names if k in batch}


@torch.no_grad()
def validate(model: nn.Module, teacher: nn.Module | None, batches: Iterable[dict[str, np.ndarray]],
             device: torch.device, autocast: AbstractContextManager, grid: int = 4,
             max_instances: int = 32) -> dict[str, float]:
    """Validation metrics of the student `model` (eval mode, on `device`) over numpy batches of
    validation rows. With `teacher` (its heads) and rows carrying "target": embedding MSE and
    cosine, agreement mIoU on the point grid. With rows carrying "rles" (the annotations' RLE,
    bbox and area): box mIoU vs the annotations, and with a teacher, agreement mIoU on the
    annotations' boxes.

    SAM 2 pairs: the agreement mIoUs only where rows carry the teacher's high-res maps, and
    then also "val_high_res_mse" (see the module docstring).

    Returns {"val_images", "val_mse", "val_cosine", "val_agreement_miou" (points),
    "val_agreement_box_miou", "val_box_miou", "val_high_res_mse"}, those that apply (mIoUs
    x100)."""
    was_training = model.training
    model.eval()
    mse, cos, hr_mse, n = [], [], [], 0
    acc = {k: MiouAccumulator() for k in ("agreement", "agreement_box", "box")}
    used: set[str] = set()
    concept = isinstance(model, ConceptModel)  # SAM 3: the trunk map only
    try:
        for batch in batches:
            t = _numpy_batch_to(batch, ("pixels", "input_hw", "target", "valid",
                                        *HIGH_RES_TARGETS), device)
            images = t["pixels"].permute(0, 3, 1, 2)
            s_maps = None  # the student's high-res maps (SAM 2)
            with autocast:
                if isinstance(model, HighResPromptableModel):
                    feats = model.embed_images_with_features(images, t["input_hw"])
                    emb, s_maps = feats["image_embed"], [m.float() for m in
                                                         feats["high_res_feats"]]
                else:
                    emb = image_embedding(model, images, t["input_hw"])
            if s_maps is not None and HIGH_RES_TARGETS[0] in t:
                hr_mse.append(torch.stack([
                    (got - t[k].float()).pow(2).flatten(1).mean(1)
                    for got, k in zip(s_maps, HIGH_RES_TARGETS, strict=True)]).mean(0).cpu())
            emb = emb.float()
            n += len(emb)
            with_teacher = teacher is not None and "target" in t
            if with_teacher or (concept and "target" in t):
                mse.append(per_image_mse(emb, t["target"], t["valid"]).cpu())
                cos.append(masked_cosine(emb, t["target"], t["valid"]).cpu())
            if concept:
                continue
            # the teacher's reference masks need its high-res maps when it is a SAM 2
            t_needs_maps = isinstance(teacher, HighResPromptableModel)
            reference = with_teacher and (not t_needs_maps or HIGH_RES_TARGETS[0] in t)
            for i in range(len(emb)):
                orig_hw = tuple(int(v) for v in batch["orig_hw"][i])
                t_emb = t["target"][i:i + 1].float() if with_teacher else None
                t_hr = ([t[k][i:i + 1].float() for k in HIGH_RES_TARGETS]
                        if reference and t_needs_maps else None)
                s_hr = None if s_maps is None else [m[i:i + 1] for m in s_maps]
                if reference:
                    pts = grid_points(orig_hw, grid)
                    ref = best_masks(teacher, t_emb, orig_hw, coords=pts, high_res=t_hr)
                    got = best_masks(model, emb[i:i + 1], orig_hw, coords=pts, high_res=s_hr)
                    acc["agreement"].extend(batched_mask_iou(ref, got).tolist(),
                                            ref.flatten(1).sum(1).tolist())
                    used.add("agreement")
                rles = json.loads(batch["rles"][i])[:max_instances] if "rles" in batch else []
                if not rles:
                    continue
                gt = torch.from_numpy(np.stack([decode_rle(r) for r in rles]))
                boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in
                                      (r["bbox"] for r in rles)], dtype=torch.float64)
                areas = [r["area"] for r in rles]
                got = best_masks(model, emb[i:i + 1], orig_hw, boxes=boxes, high_res=s_hr)
                acc["box"].extend(batched_mask_iou(gt, got).tolist(), areas)
                used.add("box")
                if reference:
                    ref = best_masks(teacher, t_emb, orig_hw, boxes=boxes, high_res=t_hr)
                    acc["agreement_box"].extend(batched_mask_iou(ref, got).tolist(), areas)
                    used.add("agreement_box")
    finally:
        model.train(was_training)
    out: dict[str, float] = {"val_images": float(n)}
    if mse:
        out["val_mse"] = float(torch.cat(mse).mean())
        out["val_cosine"] = float(torch.cat(cos).mean())
    if hr_mse:
        out["val_high_res_mse"] = float(torch.cat(hr_mse).mean())
    for k in sorted(used):
        out[f"val_{k}_miou"] = acc[k].summary()["miou_all"] or 0.0
    return out
