"""The SAM 3 detector decoder: DETR-style object queries with iterative box refinement, a
presence token, and a relative position bias from the reference boxes.

The official `TransformerDecoder` / `TransformerDecoderLayer` (keys `decoder.*` of the official
`TransformerWrapper`), eval path. Per layer, on seq-first tensors (tokens x batch x channels):
- the query position is `ref_point_head(sine(reference box))` (DAB-DETR's conditional query);
- the box bias ("boxRPB"): for every head, query and image position, MLPs of the (log-scaled)
  distances from the position's row / column to the reference box's edges, added to the
  image cross-attention logits;
- the layer: [presence token; queries] -> self-attention (position added to q, k) -> norm2 ->
  cross-attention to the prompt (`ca_text`) -> catext_norm -> cross-attention to the image
  (`cross_attn`, box bias) -> norm1 -> feed-forward -> norm3 (post-norm throughout);
- the boxes are refined: sigmoid(inverse_sigmoid(box) + bbox_embed(norm(queries))).
DAC (the duplicated one-to-many queries of training) is off in eval; its size shows only in
`query_embed` (num_queries rows). The official presence logits are computed for a clamp whose
result is discarded, so they are returned unclamped, as here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .attention import MLP, MultiheadAttention
from .boxes import box_cxcywh_to_xyxy, inverse_sigmoid
from .fusion import FusionEncoder, FusionEncoderLayer, activation_fn

RPB_LOG_SCALE = 8.0  # boxRPB "log": distances (in image fractions) times 8, then log2(1+|d|)/3
BOX_RPB_MODES = ("none", "log", "linear", "both")
SINE_TEMPERATURE = 10000.0


def sine_embed_boxes(boxes: torch.Tensor, d_model: int) -> torch.Tensor:
    """NxBx4 (cx, cy, w, h) in [0, 1] -> NxBx(2*d_model): for y, x, w, h in that order,
    d_model/2 features each, sin and cos interleaved at frequencies 2*pi / 10000^(2i/(d/2))."""
    half = d_model // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=boxes.device)
    dim_t = SINE_TEMPERATURE ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def embed(coord: torch.Tensor) -> torch.Tensor:
        v = coord[:, :, None] * (2 * math.pi) / dim_t  # NxBxhalf
        return torch.stack((v[:, :, 0::2].sin(), v[:, :, 1::2].cos()), dim=3).flatten(2)

    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat([embed(cy), embed(cx), embed(w), embed(h)], dim=2)


class DecoderLayer(nn.Module):
    """One decoder layer (keys `cross_attn`, `norm1`, `ca_text`, `catext_norm`, `self_attn`,
    `norm2`, `linear1/2`, `norm3`).

    forward(tgt NxBxC queries, tgt_query_pos NxBxC, memory_text SxBxC prompt,
    text_attention_mask BxS bool (True: padding), memory HWxBxC image tokens,
    memory_key_padding_mask HWxB bool or None, memory_pos HWxBxC, self_attn_mask or None,
    cross_attn_mask (B*heads)xNxHW float bias or None, presence_token 1xBxC or None) ->
    (NxBxC queries, 1xBxC presence token or None), float32.
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int,
                 activation: str = "relu", use_text_cross_attention: bool = True) -> None:
        super().__init__()
        self.cross_attn = MultiheadAttention(d_model, num_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.use_text_cross_attention = use_text_cross_attention
        if use_text_cross_attention:
            self.ca_text = MultiheadAttention(d_model, num_heads)
            self.catext_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, num_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = activation_fn(activation)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, tgt_query_pos: torch.Tensor,
                memory_text: torch.Tensor | None, text_attention_mask: torch.Tensor | None,
                memory: torch.Tensor, memory_key_padding_mask: torch.Tensor | None = None,
                memory_pos: torch.Tensor | None = None,
                self_attn_mask: torch.Tensor | None = None,
                cross_attn_mask: torch.Tensor | None = None,
                presence_token: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query_pos = tgt_query_pos
        if presence_token is not None:  # the presence token leads, with no position
            tgt = torch.cat([presence_token, tgt], dim=0)
            query_pos = torch.cat([torch.zeros_like(presence_token), query_pos], dim=0)
            if cross_attn_mask is not None:
                cross_attn_mask = torch.cat(
                    [torch.zeros_like(cross_attn_mask[:, :1]), cross_attn_mask], dim=1)

        # Self-attention
        qk = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(qk, qk, tgt, attn_mask=self_attn_mask)[0])
        # Cross-attention to the prompt
        if self.use_text_cross_attention:
            attended = self.ca_text(tgt + query_pos, memory_text, memory_text,
                                    key_padding_mask=text_attention_mask)[0]
            tgt = self.catext_norm(tgt + attended)
        # Cross-attention to the image
        key = memory if memory_pos is None else memory + memory_pos
        padding = memory_key_padding_mask.t() if memory_key_padding_mask is not None else None
        attended = self.cross_attn(tgt + query_pos, key, memory, attn_mask=cross_attn_mask,
                                   key_padding_mask=padding)[0]
        tgt = self.norm1(tgt + attended)
        # Feed-forward
        tgt = self.norm3(tgt + self.linear2(self.activation(self.linear1(tgt))))

        if presence_token is None:
            return tgt, None
        return tgt[1:], tgt[:1]


class TransformerDecoder(nn.Module):
    """The decoder stack with its heads (keys `layers.i.*`, `norm`, `bbox_embed`,
    `query_embed`, `reference_points`, `boxRPB_embed_x/y`, `presence_token`,
    `presence_token_head`, `presence_token_out_norm`, `ref_point_head`).

    forward(tgt NxBxC initial queries (query_embed repeated over the batch), memory HWxBxC
    encoder output, tgt_mask=None self-attention mask, memory_mask=None (only without boxRPB),
    tgt_key_padding_mask=None (unused, as in the official layer), memory_key_padding_mask HWxB
    or None, pos HWxBxC image positions, reference_boxes NxBx4 sigmoid boxes or None (then
    `reference_points`), level_start_index L (unused), spatial_shapes Lx2 (one level),
    valid_ratios BxLx2, memory_text SxBxC prompt, text_attention_mask BxS bool (True: padding),
    apply_dac=False (True, DAC's training duplication, is refused)) -> tuple:
    - hs: num_layers x N x B x C, the normed queries after each layer, float32
    - reference_boxes: num_layers x N x B x 4, the boxes each layer started from (cx, cy, w, h
      in [0, 1]): the initial ones, then the refined ones of every layer but the last
    - presence logits: num_layers x 1 x B (None without the presence token)
    - presence feats: 1 x B x C, the last layer's presence token before its norm (or None)
    """

    def __init__(self, layer_factory: Callable[[], DecoderLayer], num_layers: int, d_model: int,
                 num_heads: int, num_queries: int, dac: bool = True, num_o2m_queries: int = 0,
                 box_rpb: str = "log", presence_token: bool = True,
                 use_normed_output_consistently: bool = True) -> None:
        super().__init__()
        if box_rpb not in BOX_RPB_MODES:
            raise ValueError(f"expected box_rpb in {BOX_RPB_MODES}, got {box_rpb!r}")
        self.d_model = d_model
        self.num_layers = num_layers
        self.num_queries = num_queries
        self.dac = dac
        # With DAC the one-to-many queries are the one-to-one ones repeated (in training)
        self.num_o2m_queries = num_queries if dac else num_o2m_queries
        total_queries = num_queries if dac else num_queries + num_o2m_queries
        self.layers = nn.ModuleList(layer_factory() for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.query_embed = nn.Embedding(total_queries, d_model)
        self.reference_points = nn.Embedding(num_queries, 4)
        self.box_rpb = box_rpb
        if box_rpb != "none":
            n_in = 4 if box_rpb == "both" else 2
            self.boxRPB_embed_x = MLP(n_in, d_model, num_heads, 2)
            self.boxRPB_embed_y = MLP(n_in, d_model, num_heads, 2)
        self.presence_token = None
        if presence_token:
            self.presence_token = nn.Embedding(1, d_model)
            self.presence_token_head = MLP(d_model, d_model, 1, 3)
            self.presence_token_out_norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.use_normed_output_consistently = use_normed_output_consistently

    def _box_bias(self, reference_boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """NxBx4 cxcywh boxes -> (B*heads)xNx(H*W) additive bias of the image cross-attention."""
        boxes = box_cxcywh_to_xyxy(reference_boxes).transpose(0, 1)  # BxNx4
        bs, nq, _ = boxes.shape
        rows = torch.arange(height, dtype=torch.float32, device=boxes.device) / height
        cols = torch.arange(width, dtype=torch.float32, device=boxes.device) / width
        dy = rows.view(1, 1, -1, 1) - boxes[:, :, None, 1::2]  # BxNxHx2 (to y0, y1)
        dx = cols.view(1, 1, -1, 1) - boxes[:, :, None, 0::2]  # BxNxWx2 (to x0, x1)
        if self.box_rpb in ("log", "both"):
            def log_scale(d: torch.Tensor) -> torch.Tensor:
                d = d * RPB_LOG_SCALE
                return torch.sign(d) * torch.log2(d.abs() + 1.0) / math.log2(RPB_LOG_SCALE)

            if self.box_rpb == "log":
                dx, dy = log_scale(dx), log_scale(dy)
            else:
                dx, dy = torch.cat([dx, log_scale(dx)], -1), torch.cat([dy, log_scale(dy)], -1)
        bias_x = self.boxRPB_embed_x(dx)  # BxNxWxheads
        bias_y = self.boxRPB_embed_y(dy)  # BxNxHxheads
        bias = bias_y[:, :, :, None] + bias_x[:, :, None]  # BxNxHxWxheads
        bias = bias.flatten(2, 3).permute(0, 3, 1, 2)  # BxheadsxNxHW
        return bias.flatten(0, 1).contiguous()

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                tgt_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None,
                tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None,
                pos: torch.Tensor | None = None,
                reference_boxes: torch.Tensor | None = None,
                level_start_index: torch.Tensor | None = None,
                spatial_shapes: torch.Tensor | None = None,
                valid_ratios: torch.Tensor | None = None,
                memory_text: torch.Tensor | None = None,
                text_attention_mask: torch.Tensor | None = None,
                apply_dac: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        if apply_dac:
            raise ValueError("expected apply_dac=False (DAC's query duplication is training "
                             "only), got True")
        if memory_mask is not None and self.box_rpb != "none":
            raise ValueError(f"expected no memory_mask with box_rpb {self.box_rpb!r}, got one")
        if self.box_rpb != "none" and (spatial_shapes is None or spatial_shapes.shape[0] != 1):
            raise ValueError("expected spatial_shapes of one level with the box bias, got "
                             f"{None if spatial_shapes is None else tuple(spatial_shapes.shape)}")
        bs = tgt.shape[1]
        if valid_ratios is None:
            valid_ratios = torch.ones(bs, 1, 2, device=tgt.device)
        if reference_boxes is None:
            reference_boxes = self.reference_points.weight[:, None].repeat(1, bs, 1).sigmoid()
        presence = None
        if self.presence_token is not None:
            presence = self.presence_token.weight[None].expand(1, bs, -1)  # 1xBxC

        hs, boxes, presence_logits = [], [reference_boxes], []
        output = tgt
        scale = torch.cat([valid_ratios, valid_ratios], -1)[None]  # 1xBxLx4
        for index, layer in enumerate(self.layers):
            # Query positions from the reference boxes (first level)
            points = (reference_boxes[:, :, None] * scale)[:, :, 0]  # NxBx4
            query_pos = self.ref_point_head(sine_embed_boxes(points, self.d_model))
            cross_mask = memory_mask
            if self.box_rpb != "none":
                h, w = (int(v) for v in spatial_shapes[0])
                cross_mask = self._box_bias(reference_boxes, h, w)

            output, presence = layer(output, query_pos, memory_text, text_attention_mask,
                                     memory, memory_key_padding_mask=memory_key_padding_mask,
                                     memory_pos=pos, self_attn_mask=tgt_mask,
                                     cross_attn_mask=cross_mask, presence_token=presence)

            # Refine the boxes
            normed = self.norm(output)
            delta = self.bbox_embed(normed if self.use_normed_output_consistently else output)
            reference_boxes = (inverse_sigmoid(reference_boxes) + delta).sigmoid()
            if index != self.num_layers - 1:
                boxes.append(reference_boxes)
            hs.append(normed)
            if presence is not None:
                presence_logits.append(
                    self.presence_token_head(self.presence_token_out_norm(presence)).squeeze(-1))

        return (
            torch.stack(hs),
            torch.stack(boxes),
            torch.stack(presence_logits) if presence is not None else None,
            presence.clone() if presence is not None else None,
        )


class TransformerWrapper(nn.Module):
    """The detector's fusion encoder and decoder under the official names (`encoder`,
    `decoder`; the image model's `transformer`). No forward: the image model runs the two
    (official `_run_encoder` / `_run_decoder`)."""

    def __init__(self, encoder: nn.Module, decoder: TransformerDecoder, d_model: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.d_model = d_model
        self.num_queries = decoder.num_queries


def build_detector_transformer(*, d_model: int, num_heads: int, dim_feedforward: int,
                               num_encoder_layers: int, num_decoder_layers: int,
                               num_queries: int) -> TransformerWrapper:
    """The official SAM 3 configuration at the given sizes (SAM 3: 256, 8, 2048, 6, 6, 200):
    pre-norm fusion layers with the image position at self-attention only and no pooled text;
    decoder with text cross-attention, DAC sizes, boxRPB "log" and the presence token."""
    encoder = FusionEncoder(
        lambda: FusionEncoderLayer(d_model, num_heads, dim_feedforward, activation="relu",
                                   pos_enc_at_attn=True, pos_enc_at_cross_attn_queries=False,
                                   pos_enc_at_cross_attn_keys=False),
        num_layers=num_encoder_layers, d_model=d_model, num_feature_levels=1,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True)
    decoder = TransformerDecoder(
        lambda: DecoderLayer(d_model, num_heads, dim_feedforward, activation="relu",
                             use_text_cross_attention=True),
        num_layers=num_decoder_layers, d_model=d_model, num_heads=num_heads,
        num_queries=num_queries, dac=True, box_rpb="log", presence_token=True)
    return TransformerWrapper(encoder, decoder, d_model)
