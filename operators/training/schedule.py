"""AdamW over the trainable parameters and its step-wise schedule: a linear warm-up from
`warmup_lr` to `lr`, then a cosine to `min_lr` at the last step (TinyViT/EdgeSAM's scheduler,
counted in steps)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def learning_rate(step: int, total: int, warmup: int, cfg: OptimConfig) -> float:
    """The learning rate of step `step` (0-based) of `total`, `warmup` of them warming up."""
    if warmup and step < warmup:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW groups of the parameters that require grad: with weight decay, and (unless
    cfg.decay_norms_and_biases) without it for 1-d tensors (norm weights, biases) and
    position tables, as TinyViT's and EfficientViT's `set_weight_decay`."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim <= 1 or name.endswith(".bias") or "pos" in name.rsplit(".", 1)[-1]
        (no_decay if plain and not cfg.decay_norms_and_biases else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, total: int, warmup: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (cfg.betas, cfg.eps) and a LambdaLR giving `learning_rate` per step. Raises
    ValueError when nothing requires grad."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("expected trainable parameters, got none (check stage2.trainable)")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: learning_rate(step, total, warmup, cfg) / cfg.lr)
    return opt, sched
