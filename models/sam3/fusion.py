"""The SAM 3 fusion encoder: image tokens attend to themselves and to the prompt tokens.

The official `TransformerEncoderFusion` (keys `encoder.*` of the official `TransformerWrapper`):
a stack of pre-norm layers, each
  x = x + self_attn(norm1(x) + pos, norm1(x) + pos, norm1(x))      (image tokens, pos added)
  x = x + cross_attn_image(norm2(x), prompt, prompt)               (prompt padding masked)
  x = x + linear2(relu(linear1(norm3(x))))
on batch-first tokens; in and out the tensors are seq-first (tokens x batch x channels). With
`add_pooled_text_to_img_feat` the (masked) mean of the prompt, projected by
`text_pooling_proj`, is added to every image token first (off in SAM 3). Unlike the official
encoder, the caller's feature tensors are never modified in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiheadAttention

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def activation_fn(name: str):
    """"relu" / "gelu" -> the torch function."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"expected activation in {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


def pool_prompt(prompt: torch.Tensor, prompt_mask: torch.Tensor | None,
                with_mask: bool) -> torch.Tensor:
    """Mean of prompt SxBxC over its tokens -> BxC; with `with_mask` only over the valid ones
    (prompt_mask BxS bool, True: padding; at least one token counted)."""
    if not with_mask:
        return prompt.mean(dim=0)
    if prompt_mask is None or prompt_mask.dim() != 2:
        raise ValueError("expected a BxS prompt_mask to pool with, got "
                         f"{None if prompt_mask is None else tuple(prompt_mask.shape)}")
    valid = (~prompt_mask).to(prompt.dtype).t()[..., None]  # SxBx1
    return (prompt * valid).sum(dim=0) / valid.sum(dim=0).clamp(min=1.0)


class FusionEncoderLayer(nn.Module):
    """One pre-norm layer: self-attention over the image tokens, cross-attention to the
    prompt, feed-forward (keys `self_attn`, `cross_attn_image`, `linear1/2`, `norm1/2/3`).

    forward(tgt BxNxC image tokens, memory BxSxC prompt tokens, tgt_key_padding_mask BxN or
    None, memory_key_padding_mask BxS bool or None (True: padding), query_pos BxNxC position
    of the image tokens, pos BxSxC or None position of the prompt) -> BxNxC, float32.
    batch_first False: the same with every tensor sequence first (NxBxC, SxBxC), as the
    geometry encoder calls its copies of this layer.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int,
                 activation: str = "relu", pos_enc_at_attn: bool = True,
                 pos_enc_at_cross_attn_queries: bool = False,
                 pos_enc_at_cross_attn_keys: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads, batch_first=batch_first)
        self.cross_attn_image = MultiheadAttention(d_model, num_heads, batch_first=batch_first)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.activation = activation_fn(activation)
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                pos: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None) -> torch.Tensor:
        # Self-attention over the image tokens
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        tgt = tgt + self.self_attn(qk, qk, x, key_padding_mask=tgt_key_padding_mask)[0]
        # Cross-attention to the prompt
        x = self.norm2(tgt)
        q = x + query_pos if self.pos_enc_at_cross_attn_queries else x
        k = memory + pos if self.pos_enc_at_cross_attn_keys else memory
        tgt = tgt + self.cross_attn_image(q, k, memory,
                                          key_padding_mask=memory_key_padding_mask)[0]
        # Feed-forward
        x = self.linear2(self.activation(self.linear1(self.norm3(tgt))))
        return tgt + x


class FusionEncoder(nn.Module):
    """The stack of `FusionEncoderLayer`s over flattened image tokens (keys `layers.i.*`,
    `level_embed` with several feature levels, `text_pooling_proj` with pooled text).

    forward(src: list of HWxBxC seq-first image features (one per level), prompt SxBxC,
    src_key_padding_mask: list of HWxB bool or None (True: padding), src_pos: list of HWxBxC
    positions, prompt_key_padding_mask BxS bool (True: padding), prompt_pos SxBxC (unused: no
    position at the cross-attention keys in SAM 3; accepted as the official encoder does),
    feat_sizes: list of (H, W) per level) -> dict:
    - "memory": (sum HW)xBxC fused image tokens, float32
    - "padding_mask": (sum HW)xB bool, or None without src masks
    - "pos_embed": (sum HW)xBxC positions (plus the level embedding with several levels)
    - "memory_text": the prompt, unchanged, SxBxC
    - "level_start_index": L int64, first token of each level
    - "spatial_shapes": Lx2 int64, (H, W) of each level
    - "valid_ratios": BxLx2 float32, (width, height) fraction not padded (ones without masks)
    """

    def __init__(self, layer_factory, num_layers: int, d_model: int, num_feature_levels: int = 1,
                 add_pooled_text_to_img_feat: bool = False,
                 pool_text_with_mask: bool = True) -> None:
        super().__init__()
        if num_feature_levels > 1:  # registered before the layers, as the official one
            self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, d_model))
        else:
            self.level_embed = None
        self.layers = nn.ModuleList(layer_factory() for _ in range(num_layers))
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels
        self.add_pooled_text_to_img_feat = add_pooled_text_to_img_feat
        self.pool_text_with_mask = pool_text_with_mask
        if add_pooled_text_to_img_feat:
            self.text_pooling_proj = nn.Linear(d_model, d_model)

    def forward(self, src: list[torch.Tensor], prompt: torch.Tensor,
                src_key_padding_mask: list[torch.Tensor | None] | None = None,
                src_pos: list[torch.Tensor] | None = None,
                prompt_key_padding_mask: torch.Tensor | None = None,
                prompt_pos: torch.Tensor | None = None,
                feat_sizes: list[tuple[int, int]] | None = None) -> dict:
        levels = self.num_feature_levels
        if len(src) != levels or src_pos is None or len(src_pos) != levels:
            raise ValueError(f"expected {levels} feature level(s) with positions, got "
                             f"{len(src)} and {None if src_pos is None else len(src_pos)}")
        if feat_sizes is None or len(feat_sizes) != levels:
            raise ValueError(f"expected feat_sizes for {levels} level(s), got {feat_sizes}")
        masks = src_key_padding_mask or [None] * levels
        has_mask = masks[0] is not None
        bs = src[0].shape[1]

        pooled = None
        if self.add_pooled_text_to_img_feat:
            pooled = self.text_pooling_proj(
                pool_prompt(prompt, prompt_key_padding_mask, self.pool_text_with_mask))  # BxC

        # Flatten the levels into one batch-first token sequence
        tokens, positions, flat_masks, ratios = [], [], [], []
        for lvl, ((h, w), x, pos, mask) in enumerate(zip(feat_sizes, src, src_pos, masks,
                                                         strict=True)):
            if x.shape[0] != h * w:
                raise ValueError(f"expected {h}x{w}={h * w} tokens at level {lvl}, "
                                 f"got {x.shape[0]}")
            x = x.transpose(0, 1)  # BxHWxC
            if pooled is not None:
                x = x + pooled[:, None]
            pos = pos.transpose(0, 1)
            if self.level_embed is not None:
                pos = pos + self.level_embed[lvl].view(1, 1, -1)
            tokens.append(x)
            positions.append(pos)
            if has_mask:
                mask = mask.t().reshape(bs, h, w)  # BxHxW
                flat_masks.append(mask.flatten(1))
                valid_h = (~mask[:, :, 0]).sum(1).float() / h
                valid_w = (~mask[:, 0, :]).sum(1).float() / w
                ratios.append(torch.stack([valid_w, valid_h], -1))
        output = torch.cat(tokens, 1)
        pos_flat = torch.cat(positions, 1)
        mask_flat = torch.cat(flat_masks, 1) if has_mask else None
        spatial_shapes = torch.tensor([list(s) for s in feat_sizes], dtype=torch.long,
                                      device=output.device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1),
                                       spatial_shapes.prod(1).cumsum(0)[:-1]])
        if has_mask:
            valid_ratios = torch.stack(ratios, 1)
        else:
            valid_ratios = torch.ones(bs, levels, 2, device=output.device)

        memory = prompt.transpose(0, 1)  # BxSxC
        for layer in self.layers:
            output = layer(output, memory, tgt_key_padding_mask=mask_flat,
                           memory_key_padding_mask=prompt_key_padding_mask, query_pos=pos_flat)

        return {
            "memory": output.transpose(0, 1),
            "padding_mask": mask_flat.t() if mask_flat is not None else None,
            "pos_embed": pos_flat.transpose(0, 1),
            "memory_text": prompt,
            "level_start_index": level_start_index,
            "spatial_shapes": spatial_shapes,
            "valid_ratios": valid_ratios,
        }
