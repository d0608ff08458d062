"""SAM 3's query scores and boxes: dot-product scoring of the decoder queries against the
mean-pooled prompt (keys `dot_prod_scoring.*` of the official image model), and the official
`Sam3Image._update_scores_and_boxes` of the eval path (`update_scores_and_boxes`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MLP
from .boxes import box_cxcywh_to_xyxy, inverse_sigmoid
from .fusion import pool_prompt

SCORE_CLAMP = 12.0  # the official clamp of the dot-product logits


class DotProductScoring(nn.Module):
    """Logit of each query: <hs_proj(query), prompt_proj(mean of prompt_mlp(prompt))>
    / sqrt(d_proj), clamped to [-clamp_max_val, clamp_max_val] (keys `prompt_mlp.*` when given,
    `prompt_proj`, `hs_proj`).

    forward(hs LxBxNxC decoder queries (batch-first), prompt SxBxC, prompt_mask BxS bool (True:
    padding)) -> LxBxNx1 float32 logits.
    """

    def __init__(self, d_model: int, d_proj: int, prompt_mlp: nn.Module | None = None,
                 clamp_logits: bool = True, clamp_max_val: float = SCORE_CLAMP) -> None:
        super().__init__()
        self.prompt_mlp = prompt_mlp
        self.prompt_proj = nn.Linear(d_model, d_proj)
        self.hs_proj = nn.Linear(d_model, d_proj)
        self.scale = 1.0 / math.sqrt(d_proj)
        self.clamp_logits = clamp_logits
        self.clamp_max_val = clamp_max_val

    def forward(self, hs: torch.Tensor, prompt: torch.Tensor,
                prompt_mask: torch.Tensor) -> torch.Tensor:
        if hs.dim() != 4 or prompt.dim() != 3 or prompt_mask.dim() != 2:
            raise ValueError("expected hs LxBxNxC, prompt SxBxC and prompt_mask BxS, got "
                             f"{tuple(hs.shape)}, {tuple(prompt.shape)}, "
                             f"{tuple(prompt_mask.shape)}")
        if self.prompt_mlp is not None:
            prompt = self.prompt_mlp(prompt)
        pooled = self.prompt_proj(pool_prompt(prompt, prompt_mask, with_mask=True))  # BxD
        scores = torch.matmul(self.hs_proj(hs), pooled[..., None]) * self.scale  # LxBxNx1
        if self.clamp_logits:
            scores = scores.clamp(-self.clamp_max_val, self.clamp_max_val)
        return scores


def build_dot_product_scoring(d_model: int, d_proj: int, prompt_hidden_dim: int
                              ) -> DotProductScoring:
    """The official scorer: its prompt MLP is 2 layers d_model -> prompt_hidden_dim -> d_model,
    residual, then a LayerNorm (SAM 3: 256, 256, 2048)."""
    prompt_mlp = MLP(d_model, prompt_hidden_dim, d_model, 2, residual=True,
                     out_norm=nn.LayerNorm(d_model))
    return DotProductScoring(d_model, d_proj, prompt_mlp=prompt_mlp)


def update_scores_and_boxes(out: dict, hs: torch.Tensor, reference_boxes: torch.Tensor,
                            prompt: torch.Tensor, prompt_mask: torch.Tensor, *,
                            scoring: DotProductScoring, box_head: nn.Module,
                            dec_presence_out: torch.Tensor | None = None) -> dict:
    """The eval computation of the official `_update_scores_and_boxes`, on the last layer.

    hs LxBxNxC and reference_boxes LxBxNx4 batch-first (the decoder's outputs transposed
    (1, 2)), prompt SxBxC, prompt_mask BxS bool (True: padding), box_head the decoder's
    `bbox_embed`, dec_presence_out LxBx1 or None. Adds to `out` and returns it:
    - "queries": BxNxC, the last layer's queries
    - "pred_logits": BxNx1 dot-product logits
    - "pred_boxes": BxNx4, sigmoid(inverse_sigmoid(reference) + box_head(hs)), cx cy w h in [0, 1]
    - "pred_boxes_xyxy": BxNx4, the same boxes as x0 y0 x1 y1
    - "presence_logit_dec": Bx1 (only with dec_presence_out)
    All float32. The official computes every layer and keeps the last in eval (no aux outputs).
    """
    last_hs = hs[-1:]
    out["queries"] = hs[-1]
    logits = scoring(last_hs, prompt, prompt_mask)[-1]
    boxes = (inverse_sigmoid(reference_boxes[-1]) + box_head(last_hs[-1])).sigmoid()
    if dec_presence_out is not None:
        out["presence_logit_dec"] = dec_presence_out[-1]
    out["pred_logits"] = logits
    out["pred_boxes"] = boxes
    out["pred_boxes_xyxy"] = box_cxcywh_to_xyxy(boxes)
    return out
