"""Attention and MLP layers shared by the SAM 3 detector modules.

`MultiheadAttention` holds the parameters of `torch.nn.MultiheadAttention` under the same names
(`in_proj_weight` 3CxC, `in_proj_bias` 3C, `out_proj.weight/bias`), so the official
`MultiheadAttentionWrapper` and plain `nn.MultiheadAttention` weights load into it; it never
returns attention weights. `MLP` is the official `MLP` (ReLU between `layers.i`, an optional
residual and an optional output LayerNorm `out_norm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True: may not attend) as 0 / -inf, a float mask unchanged."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention with one packed input projection.

    forward(query LxBxC, key SxBxC, value SxBxC (BxLxC / BxSxC when `batch_first`),
    attn_mask=None: LxS or (B*num_heads)xLxS, bool (True: blocked) or float (added to the
    logits), key_padding_mask=None: BxS bool (True: padding) or float (added)) ->
    (output shaped as query, None): the pair `nn.MultiheadAttention` returns without weights.
    All float32 (or the parameters' dtype).
    """

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"expected embed_dim divisible by num_heads {num_heads}, "
                             f"got {embed_dim}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """BxNxC -> BxHxNx(C/H), projected by the `index`-th third of the input projection."""
        c = self.embed_dim
        x = F.linear(x, self.in_proj_weight[index * c:(index + 1) * c],
                     self.in_proj_bias[index * c:(index + 1) * c])
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if not self.batch_first:  # seq-first in and out
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n_q, _ = query.shape
        n_k = key.shape[1]
        q, k, v = self._heads(query, 0), self._heads(key, 1), self._heads(value, 2)

        # One additive mask BxHxLxS (or broadcastable) from the two optional masks
        mask = None
        if attn_mask is not None:
            mask = _additive_mask(attn_mask, q.dtype)
            if mask.dim() == 3:
                mask = mask.view(b, self.num_heads, n_q, n_k)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, n_k):
                raise ValueError(f"expected key_padding_mask of shape {(b, n_k)}, "
                                 f"got {tuple(key_padding_mask.shape)}")
            padding = _additive_mask(key_padding_mask, q.dtype)[:, None, None, :]
            mask = padding if mask is None else mask + padding

        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # BxHxLx(C/H)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n_q, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


class MLP(nn.Module):
    """`num_layers` linear layers `layers.i` with ReLU between them, then optionally the input
    added back (`residual`, needs input_dim == output_dim) and a norm `out_norm` (a module, e.g.
    LayerNorm, or None): ...xIn -> ...xOut, float32."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 residual: bool = False, out_norm: nn.Module | None = None) -> None:
        super().__init__()
        if residual and input_dim != output_dim:
            raise ValueError(f"expected input_dim == output_dim for a residual MLP, "
                             f"got {input_dim} and {output_dim}")
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.residual = residual
        self.out_norm = out_norm if out_norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        if self.residual:
            x = x + skip
        return self.out_norm(x)
