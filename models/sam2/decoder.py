"""SAM 2's prompt encoder and mask decoder (the "SAM heads" of the official `SAM2Base`).

Prompt encoder: SAM 1's (same weights and names), fed as SAM 2 feeds it: a box is two corner
points with labels 2 and 3 placed before the clicks, and every prompt of points gets SAM 1's
padding point (0, 0) with label -1, box or not (the official predictor never passes `boxes`).

Mask decoder, unlike SAM 1's:
- an object-score token before the IoU token, read by a 3-layer MLP (`pred_obj_score_head`);
- the IoU head ends in a sigmoid;
- the upscaling adds the two high-resolution maps of the image encoder, projected by
  `conv_s1` (stride 8, 256 -> 64 channels) and `conv_s0` (stride 4, 256 -> 32) when the image
  is embedded: ln(deconv1(x) + s1) -> GELU -> deconv2(.) + s0 -> GELU;
- MLPs are named `layers.i` (also inside the two-way transformer: `mlp.layers.0/1`);
- single-mask output (multimask_output=False) falls back to the best of the three multimask
  outputs when the single mask is unstable (`dynamic_multimask_via_stability`, what the
  official image predictor's builder turns on): stability = #(logit > 0.05) / #(logit > -0.05)
  of the low-res single-mask logits (1 when both are empty), unstable below 0.98.
"""

from __future__ import annotations

import torch
from torch import nn

from ..common import LayerNorm2d
from ..prompt_encoder import PromptEncoder
from ..transformer import TwoWayAttentionBlock, TwoWayTransformer
from .layers import MLP

DECODER_NORM_EPS = 1e-5  # the two-way transformer's LayerNorms (torch's default)
STABILITY_DELTA = 0.05  # dynamic multimask: the logit offsets of the stability score
STABILITY_THRESH = 0.98  # dynamic multimask: below this the single mask is replaced
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class Sam2PromptEncoder(PromptEncoder):
    """SAM 1's prompt encoder with box corners as labelled points (2 top-left, 3 bottom-right).

    forward(points=(PxNx2 float coords in the input frame, PxN int labels: 1 fg, 0 bg, 2/3
    box corners, -1 padding), boxes=None, masks=Px1x(4h)x(4w) logits or None) ->
    (sparse Px(N+1)xC with the padding point, dense PxCxhxw)."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor,
                      pad: bool) -> torch.Tensor:
        emb = super()._embed_points(points, labels, pad)
        if pad:
            labels = torch.cat([labels, -labels.new_ones((labels.shape[0], 1))], dim=1)
        labels = labels[..., None]
        emb = emb + (labels == LABEL_BOX_TOP_LEFT) * self.point_embeddings[2].weight
        return emb + (labels == LABEL_BOX_BOTTOM_RIGHT) * self.point_embeddings[3].weight


class Sam2TwoWayBlock(TwoWayAttentionBlock):
    """SAM 1's two-way block with its token MLP named `mlp.layers.0/1` (ReLU)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int, skip_first_layer_pe: bool,
                 norm_eps: float = DECODER_NORM_EPS) -> None:
        super().__init__(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                         skip_first_layer_pe, norm_eps=norm_eps)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, act=nn.ReLU)


class Sam2TwoWayTransformer(TwoWayTransformer):
    """SAM 1's two-way transformer with SAM 2's blocks (same computation)."""

    block_class = Sam2TwoWayBlock


def _add_per_image(x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """x PxCxHxW (the prompts of each image contiguous) + feature IxCxHxW (I divides P),
    broadcast per image without copying the feature P/I times."""
    p, i = x.shape[0], feature.shape[0]
    if i == p or i == 1:
        return x + feature
    return (x.view(i, p // i, *x.shape[1:]) + feature[:, None]).view(x.shape)


def stability_scores(logits: torch.Tensor, delta: float) -> torch.Tensor:
    """...xHxW logits -> ... float: #(logit > delta) / #(logit > -delta), 1 where both are 0."""
    flat = logits.flatten(-2)
    inter = (flat > delta).sum(-1).float()
    union = (flat > -delta).sum(-1).float()
    return torch.where(union > 0, inter / union, 1.0)


class Sam2MaskDecoder(nn.Module):
    """Image embedding + its two high-res maps + prompt tokens -> low-res mask logits
    (4x the embedding grid), predicted IoU and object-score logits."""

    def __init__(self, transformer_dim: int, transformer: nn.Module,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256,
                 dynamic_multimask_stability_delta: float = STABILITY_DELTA,
                 dynamic_multimask_stability_thresh: float = STABILITY_THRESH) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer_dim = d
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, d)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.obj_score_token = nn.Embedding(1, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, kernel_size=2, stride=2),
            LayerNorm2d(d // 4, eps=1e-6),
            nn.GELU(),
            nn.ConvTranspose2d(d // 4, d // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)  # stride-4 map
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)  # stride-8 map
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(d, iou_head_hidden_dim, self.num_mask_tokens,
                                       iou_head_depth, sigmoid_output=True)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.stability_delta = dynamic_multimask_stability_delta
        self.stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor],
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_embeddings IxCxhxw (I = 1, shared by every prompt, or I dividing P with each
        image's prompts contiguous); image_pe 1xCxhxw; sparse PxNxC; dense PxCxhxw;
        high_res_features [Ix(C/8)x4hx4w, Ix(C/4)x2hx2w] (conv_s0 / conv_s1 already applied).

        Returns float logits Px3x4hx4w (Px1 single-mask, see the module docstring), IoU Px3 (or
        Px1) and object-score logits Px1."""
        masks, iou, obj = self.predict_masks(image_embeddings, image_pe,
                                             sparse_prompt_embeddings, dense_prompt_embeddings,
                                             high_res_features)
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], obj
        if self.training:
            return masks[:, :1], iou[:, :1], obj
        masks, iou = self._dynamic_single_mask(masks, iou)
        return masks, iou, obj

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every mask token: Px4x4hx4w logits, Px4 IoU, Px1 object-score logits."""
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight,
                                   self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(num_prompts, -1, -1),
                            sparse_prompt_embeddings], dim=1)  # (P, 2 + 4 + N, C)
        # One copy of the image embedding per prompt
        num_images = image_embeddings.shape[0]
        if num_prompts % num_images:
            raise ValueError(f"expected the prompt count to be a multiple of the image count "
                             f"{num_images}, got {num_prompts} prompts")
        if any(f.shape[0] != num_images for f in high_res_features):
            raise ValueError(f"expected high-res features of {num_images} images, got "
                             f"{[tuple(f.shape) for f in high_res_features]}")
        src = torch.repeat_interleave(image_embeddings, num_prompts // num_images, dim=0)
        src = src + dense_prompt_embeddings
        pos_src = image_pe.expand(num_prompts, -1, -1, -1)
        b, c, h, w = src.shape
        # Run the two-way transformer
        hs, src = self.transformer(src, pos_src, tokens)
        obj_token_out = hs[:, 0, :]
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        # Upscale the image tokens, adding the high-res maps, and project them per mask token
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        x = src.transpose(1, 2).reshape(b, c, h, w)
        x = act1(norm1(_add_per_image(deconv1(x), feat_s1)))
        upscaled = act2(_add_per_image(deconv2(x), feat_s0))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (P, tokens, C/8)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        # Predict mask quality and object presence
        return masks, self.iou_prediction_head(iou_token_out), self.pred_obj_score_head(
            obj_token_out)

    def _dynamic_single_mask(self, masks: torch.Tensor, iou: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Px4 outputs -> the single mask (token 0), or where it is unstable the multimask
        output of highest predicted IoU: Px1xhxw, Px1."""
        rows = torch.arange(masks.shape[0], device=masks.device)
        best = iou[:, 1:].argmax(dim=-1) + 1
        stable = stability_scores(masks[:, 0], self.stability_delta) >= self.stability_thresh
        pick = torch.where(stable, torch.zeros_like(best), best)
        return masks[rows, pick][:, None], iou[rows, pick][:, None]
