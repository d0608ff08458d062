"""The losses of both stages, with the region they count over. Pure torch.

Stage 1 (EdgeSAM `training/train.py`, PIXEL_WISE): the squared error of each embedding value,
averaged over channels, summed over the grid cells that hold the image (not padding) and
divided by their number, then averaged over the batch.

Stage 2: per prompt and mask output, BCE (EdgeSAM, EfficientViT-SAM), sigmoid focal (SAM,
alpha 0.25, gamma 2) and Dice (smooth 1) over the un-padded region of the prompt frame, and
the IoU head's MSE to the IoU of its own thresholded mask with the target (SAM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_ALPHA = 0.25  # SAM / detectron2 sigmoid_focal_loss defaults
FOCAL_GAMMA = 2.0
DICE_SMOOTH = 1.0  # EdgeSAM / EfficientViT-SAM dice_loss


def cell_mask(valid: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """int Bx2 (rows, cols) of valid cells -> bool BxHxW, True on the top-left rows x cols."""
    rows = torch.arange(grid[0], device=valid.device)
    cols = torch.arange(grid[1], device=valid.device)
    return (rows[None, :, None] < valid[:, 0, None, None]) & \
        (cols[None, None, :] < valid[:, 1, None, None])


def region_mask(hw: torch.Tensor, size: int) -> torch.Tensor:
    """int Bx2 (h, w) -> bool Bxsize x size, True inside the top-left h x w."""
    return cell_mask(hw, (size, size))


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor
               ) -> torch.Tensor:
    """float BxCxHxW student and teacher embeddings, int Bx2 valid cells -> float scalar:
    per-cell MSE over channels, mean over the valid cells of each image, mean over images."""
    if student.shape != teacher.shape:
        raise ValueError(f"expected embeddings of one shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    per_cell = (student.float() - teacher.float()).pow(2).mean(1)  # (B, H, W)
    inside = cell_mask(valid, tuple(student.shape[-2:])).float()  # (B, H, W)
    per_image = (per_cell * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)
    return per_image.mean()


def masked_cosine(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor
                  ) -> torch.Tensor:
    """float BxCxHxW, int Bx2 -> float B: cosine similarity of the two embeddings' valid
    cells, taken as one vector per image."""
    inside = cell_mask(valid, tuple(student.shape[-2:]))[:, None].float()  # (B, 1, H, W)
    s = (student.float() * inside).flatten(1)
    t = (teacher.float() * inside).flatten(1)
    return F.cosine_similarity(s, t, dim=1, eps=1e-8)


def per_image_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor
                  ) -> torch.Tensor:
    """float B: `masked_mse` of each image."""
    per_cell = (student.float() - teacher.float()).pow(2).mean(1)
    inside = cell_mask(valid, tuple(student.shape[-2:])).float()
    return (per_cell * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1)


def _mean_over(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """float PxKxTxT, bool PxTxT -> float PxK: mean over the region."""
    r = region[:, None].float()
    return (values * r).flatten(2).sum(-1) / r.flatten(2).sum(-1).clamp(min=1)


def bce(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """float PxKxTxT logits, float PxKxTxT targets in [0, 1], bool PxTxT region -> float PxK:
    binary cross-entropy averaged over the region."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return _mean_over(loss, region)


def focal(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """As `bce`, the sigmoid focal loss (alpha 0.25, gamma 2)."""
    logits = logits.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** FOCAL_GAMMA
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    return _mean_over(alpha_t * loss, region)


def dice(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """As `bce`, 1 - (2 |p t| + 1) / (|p| + |t| + 1) with p = sigmoid(logits), inside the
    region."""
    r = region[:, None].float()
    p = torch.sigmoid(logits.float()) * r
    t = target * r
    inter = (p * t).flatten(2).sum(-1)
    return 1 - (2 * inter + DICE_SMOOTH) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1)
                                            + DICE_SMOOTH)


def hard_iou(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor
             ) -> torch.Tensor:
    """float PxKxTxT logits, PxKxTxT 0/1 targets, bool PxTxT region -> float PxK: IoU of
    (logits > 0) with the target inside the region; 0 when both are empty."""
    r = region[:, None]
    pred = (logits > 0) & r
    tgt = (target > 0.5) & r
    inter = (pred & tgt).flatten(2).sum(-1).float()
    union = (pred | tgt).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def mask_losses(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor,
                region: torch.Tensor, weights: dict[str, float], min_over_outputs: bool
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-2 loss of P prompts with K mask outputs.

    logits: float PxKxTxT; iou_pred: float PxK; target: float PxKxTxT in [0, 1] (one target
    per output, e.g. the teacher's; a single target is expanded); region: bool PxTxT;
    weights: bce_weight, focal_weight, dice_weight, iou_weight. min_over_outputs: each prompt
    counts its output of least mask loss (SAM's ambiguity rule), else the mean over outputs.

    Returns the weighted scalar and its parts (scalars, for logging)."""
    if target.shape[1] == 1 and logits.shape[1] > 1:
        target = target.expand_as(logits)
    mask_loss = torch.zeros(logits.shape[:2], device=logits.device)
    parts: dict[str, torch.Tensor] = {}
    for name, fn in (("bce", bce), ("focal", focal), ("dice", dice)):
        w = weights[f"{name}_weight"]
        if w:
            term = fn(logits, target, region)  # (P, K)
            mask_loss = mask_loss + w * term
            parts[name] = term
    with torch.no_grad():
        actual = hard_iou(logits.detach(), target, region)  # (P, K)
    iou_loss = (iou_pred.float() - actual).pow(2)  # (P, K)
    if min_over_outputs:
        pick = mask_loss.detach().argmin(1)  # (P,)
        rows = torch.arange(len(pick), device=pick.device)
        chosen_mask, chosen_iou = mask_loss[rows, pick], iou_loss.mean(1)
        parts = {k: v[rows, pick].mean() for k, v in parts.items()}
    else:
        chosen_mask, chosen_iou = mask_loss.mean(1), iou_loss.mean(1)
        parts = {k: v.mean() for k, v in parts.items()}
    parts["iou"] = chosen_iou.mean()
    total = chosen_mask.mean() + weights["iou_weight"] * chosen_iou.mean()
    return total, parts
