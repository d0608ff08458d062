"""One training step's forward of each stage, as modules (so that DistributedDataParallel wraps
the whole forward, decoder passes included) over batches of training rows on the device.

Batch fields are `ingest.TRAIN_FIELDS` as `iter_torch_batches` stacks them: "pixels"
BxSxSx3, "input_hw" Bx2, "orig_hw" Bx2, "target" BxCxHxW, "valid" Bx2, "masks" BxNxTxT,
"boxes" BxNx4, "count" B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import HighResPromptableModel, image_embedding

from .config import Stage2Config
from .losses import hard_iou, mask_losses, masked_mse, region_mask
from .pairing import embedding_frame
from .prompts import jitter_boxes, refinement_points, sample_points

HIGH_RES_TARGETS = ("target_high_res_0", "target_high_res_1")  # ingest.TRAIN_FIELDS


def images_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """"pixels" BxSxSx3 -> Bx3xSxS (dtype kept: uint8, or float for EfficientSAM)."""
    return batch["pixels"].permute(0, 3, 1, 2)


def frame_hw_t(model: nn.Module, orig_hw: torch.Tensor, size: int) -> torch.Tensor:
    """int Bx2 original sizes -> int Bx2 (h, w) of the image in a size x size prompt-frame
    square (`ingest.frame_hw` on the device): longest side to `size` (rounded half up), or
    the whole square for a stretching model."""
    if embedding_frame(model) == "stretch":
        return torch.full_like(orig_hw, size)
    scale = size / orig_hw.max(dim=1, keepdim=True).values.double()
    return torch.floor(orig_hw.double() * scale + 0.5).long()


class EncoderStep(nn.Module):
    """Stage 1: the student's image encoder on the batch, and the masked MSE to the teacher
    embedding; with `high_res_weight` > 0 and batches carrying the teacher's high-res maps
    ("target_high_res_0" Bx32x256x256, "target_high_res_1" Bx64x128x128 for SAM 2), plus that
    weight times the MSE of each of the student's high-res maps (its encoder's stride-4 and
    stride-8 maps through the teacher's conv_s0 / conv_s1) to them. A SAM 3 student's
    embedding is its trunk map (`models.image_embedding`), all cells valid (stretched frame).
    forward(batch) -> (scalar loss, float BxCxHxW student embeddings, detached)."""

    def __init__(self, model: nn.Module, high_res_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.high_res_weight = high_res_weight

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images = images_of(batch)
        targets = [batch[k] for k in HIGH_RES_TARGETS if k in batch]
        if self.high_res_weight and targets:
            feats = self.model.embed_images_with_features(images, batch["input_hw"])
            emb = feats["image_embed"]  # (B, C, H, W)
            loss = masked_mse(emb, batch["target"], batch["valid"])
            for got, want in zip(feats["high_res_feats"], targets, strict=True):
                # the stretched frame of SAM 2: every cell holds image
                loss = loss + self.high_res_weight * (got.float() - want.float()).pow(2).mean()
            return loss, emb.detach()
        emb = image_embedding(self.model, images, batch["input_hw"])  # (B, C, H, W)
        return masked_mse(emb, batch["target"], batch["valid"]), emb.detach()


def _upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    if logits.shape[-1] == size:
        return logits.float()
    return F.interpolate(logits.float(), (size, size), mode="bilinear", align_corners=False)


class PromptedStep(nn.Module):
    """Stage 2: the student's embedding, then its decoder on prompts drawn from the batch's
    instances (a box with noise, or 1..N points), then `refine_iters` passes each adding
    EdgeSAM's point in the disagreement region; the loss against the teacher's masks (its
    decoder on the saved embeddings, same prompts) or the ground truth, averaged over passes.

    SAM 2 (a HighResPromptableModel) decodes with high-res maps beside the embedding: the
    student with its own (`embed_images_with_features`, so the loss reaches its high-res
    projections too), a SAM 2 teacher with the corpus's ("target_high_res_0/1": embed
    output.high_res; the driver refuses teacher targets without them).

    forward(batch, use_boxes, gen) -> (scalar loss, {part: scalar})."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, cfg: Stage2Config,
                 mask_size: int) -> None:
        super().__init__()
        self.model = model
        self.teacher = teacher  # heads only; frozen
        self.cfg = cfg
        self.mask_size = mask_size
        self.weights = cfg.weights()

    def _teacher_targets(self, emb: torch.Tensor, coords, labels, boxes, multimask: bool,
                         high_res: list[torch.Tensor] | None) -> torch.Tensor:
        extra = {} if high_res is None else {"high_res_features": high_res}
        with torch.no_grad():
            logits, _ = self.teacher.decode(emb, coords, labels, boxes, None, multimask,
                                            **extra)
            return (_upsample(logits, self.mask_size) > self.teacher.mask_threshold).float()

    def _teacher_maps(self, batch: dict[str, torch.Tensor], img: torch.Tensor
                      ) -> list[torch.Tensor] | None:
        """A SAM 2 teacher's high-res maps of each prompt's image (float PxCixHixWi), from
        the batch; None for a SAM 1 design teacher."""
        if not isinstance(self.teacher, HighResPromptableModel):
            return None
        if HIGH_RES_TARGETS[0] not in batch:
            raise ValueError(
                f"expected the SAM 2 teacher's high-res maps in the batch "
                f"({', '.join(HIGH_RES_TARGETS)}: a corpus embedded with output.high_res) for "
                f"its masks, got the fields {sorted(batch)}")
        return [batch[k][img].float() for k in HIGH_RES_TARGETS]

    def forward(self, batch: dict[str, torch.Tensor], use_boxes: bool, gen: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model, cfg, t = self.model, self.cfg, self.mask_size
        frame = model.prompt_size
        maps: list[torch.Tensor] | None = None  # the student's high-res maps (SAM 2)
        if isinstance(model, HighResPromptableModel):
            feats = model.embed_images_with_features(images_of(batch), batch["input_hw"])
            emb, maps = feats["image_embed"], feats["high_res_feats"]  # (B, C, H, W), ...
        else:
            emb = model.embed_images(images_of(batch), batch["input_hw"])  # (B, C, H, W)
        n = batch["masks"].shape[1]
        present = torch.arange(n, device=emb.device)[None, :] < batch["count"][:, None]
        img, inst = present.nonzero(as_tuple=True)  # P prompts
        gt = batch["masks"][img, inst].bool()  # (P, T, T)
        boxes = batch["boxes"][img, inst].float()  # (P, 4)
        region = region_mask(frame_hw_t(model, batch["orig_hw"], t), t)[img]  # (P, T, T)
        emb_p = emb[img]  # (P, C, H, W)
        extra = {} if maps is None else {"high_res_features": [m[img] for m in maps]}
        teacher_emb = batch["target"][img].float() if self.teacher is not None else None
        teacher_maps = self._teacher_maps(batch, img) if self.teacher is not None else None

        # First pass: a box (with SAM's noise) or 1..max_points positive points
        if use_boxes:
            coords = labels = None
            box_in = jitter_boxes(boxes, cfg.box_noise, cfg.box_noise_max, gen)
        else:
            coords, labels = sample_points(gt, boxes, cfg.max_points, frame, gen)
            box_in = None
        total, parts_sum = 0.0, {}
        passes = 1 + cfg.refine_iters
        multimask = cfg.multimask
        for i in range(passes):
            logits, iou = model.decode(emb_p, coords, labels, box_in, None, multimask, **extra)
            logits = _upsample(logits, t)  # (P, K, T, T)
            if teacher_emb is not None:
                target = self._teacher_targets(teacher_emb, coords, labels, box_in, multimask,
                                               teacher_maps)
            else:
                target = gt.float()[:, None]
            loss, parts = mask_losses(logits, iou, target, region, self.weights,
                                      min_over_outputs=teacher_emb is None)
            total = total + loss / passes
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v.detach() / passes
            if i == passes - 1:
                break
            # Refinement: a point where the chosen output and its target disagree
            with torch.no_grad():
                tgt = target.expand_as(logits) > 0.5
                pick = hard_iou(logits, tgt.float(), region).argmax(1)  # (P,)
                rows = torch.arange(len(pick), device=pick.device)
                new_c, new_l = refinement_points(logits[rows, pick] > 0, tgt[rows, pick],
                                                 region, frame, gen)
            coords = new_c if coords is None else torch.cat([coords, new_c], dim=1)
            labels = new_l if labels is None else torch.cat([labels, new_l], dim=1)
            multimask = False  # refined prompts are unambiguous (SAM, EdgeSAM)
        return total, parts_sum
