"""SAM 3's geometry (exemplar) encoder: boxes and points of a prompt -> prompt tokens, as the
official `SequenceGeometryEncoder` is built for the image model (boxes kept as boxes, every
encoding on, a CLS token, a post-encoding projection, 3 transformer layers, no mask prompts).

Conventions (the official ones): sequences first, batch second; padding masks batch first,
True at padding; sequences right-padded. Boxes are normalised (cx, cy, w, h), points
normalised (x, y), both as fractions of the image. Labels: 1 positive, 0 negative.

Each point token is the sum of a linear map of (x, y), a linear map of the image feature
sampled there (bilinear `grid_sample` of the LayerNorm-ed stride-14 map), a linear map of its
sine encoding [enc(x), enc(y)], and its label embedding. Each box token likewise sums a linear
map of (cx, cy, w, h), a 7x7 conv of the RoIAlign-pooled feature of the box, a linear map of
[enc(cy), enc(cx), h, w], and its label embedding. The tokens are points then boxes (each
prompt's valid ones packed first) and a CLS token after them -- always, so a prompt with no box
and no point (text only) still gives one token, which still attends to the image. Then a
linear + LayerNorm, the transformer layers (self-attention among the tokens, cross-attention to
the raw image tokens with their position encoding on the keys, FFN), and a final LayerNorm.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import box_cxcywh_to_xyxy
from .roi_align import roi_align

NUM_LABELS = 2  # negative (0) and positive (1)


def concat_padded(seq1: torch.Tensor, mask1: torch.Tensor, seq2: torch.Tensor,
                  mask2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded sequences -> one right-padded sequence with each batch entry's valid
    elements of seq2 right after its valid elements of seq1.

    seq1: L1xBx... , mask1: BxL1 bool (True: padding); seq2: L2xBx..., mask2: BxL2 ->
    ((L1+L2)xBx... in seq2's dtype, Bx(L1+L2) bool). As the official concatenation: seq1 fills
    the first L1 rows, then all L2 rows of seq2 (padding rows too) are written from each entry's
    length of seq1 on; the rows after are what seq1 left there, or zeros."""
    len1, batch = seq1.shape[:2]
    len2 = seq2.shape[0]
    if seq2.shape[1] != batch or mask1.shape != (batch, len1) or mask2.shape != (batch, len2):
        raise ValueError(f"expected sequences LxBx... with BxL masks, got {list(seq1.shape)}, "
                         f"{list(mask1.shape)}, {list(seq2.shape)}, {list(mask2.shape)}")
    valid1 = (~mask1).sum(-1)  # B
    total = valid1 + (~mask2).sum(-1)
    out = seq2.new_zeros((len1 + len2, *seq2.shape[1:]))
    out[:len1] = seq1
    rows = torch.arange(len2, device=seq2.device)[:, None] + valid1[None]  # L2 x B
    rows = rows.view(len2, batch, *([1] * (seq2.ndim - 2))).expand_as(seq2)
    out = out.scatter(0, rows, seq2)
    mask = torch.arange(len1 + len2, device=seq2.device)[None] >= total[:, None]
    return out, mask


class Prompt:
    """The boxes and points of B prompts (the official `Prompt` without mask prompts, which the
    image model does not encode).

    box_embeddings: NbxBx4 float32 normalised (cx, cy, w, h); box_mask: BxNb bool (True:
    padding); box_labels: NbxB long (1 positive, 0 negative). point_embeddings: NpxBx2 float32
    normalised (x, y); point_mask: BxNp bool; point_labels: NpxB long. What is left out
    defaults to none of its kind (0xBx4 / 0xBx2), no padding and positive labels; the batch
    size comes from whichever is given (boxes with N = 0 for a prompt of neither)."""

    def __init__(self, box_embeddings: torch.Tensor | None = None,
                 box_mask: torch.Tensor | None = None,
                 point_embeddings: torch.Tensor | None = None,
                 point_mask: torch.Tensor | None = None,
                 box_labels: torch.Tensor | None = None,
                 point_labels: torch.Tensor | None = None) -> None:
        self.box_embeddings = self.box_mask = self.box_labels = None
        self.point_embeddings = self.point_mask = self.point_labels = None
        given = box_embeddings if box_embeddings is not None else point_embeddings
        if given is None:
            return
        batch, device = given.shape[1], given.device
        self.box_embeddings, self.box_labels, self.box_mask = self._filled(
            "box", box_embeddings, box_labels, box_mask, 4, batch, device)
        self.point_embeddings, self.point_labels, self.point_mask = self._filled(
            "point", point_embeddings, point_labels, point_mask, 2, batch, device)

    @staticmethod
    def _filled(kind: str, coords: torch.Tensor | None, labels: torch.Tensor | None,
                mask: torch.Tensor | None, width: int, batch: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if coords is None:
            coords = torch.zeros(0, batch, width, device=device)
        n = coords.shape[0]
        if labels is None:
            labels = torch.ones(n, batch, dtype=torch.long, device=device)
        if mask is None:
            mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
        if coords.ndim != 3 or coords.shape[1:] != (batch, width):
            raise ValueError(f"expected {kind} coordinates Nx{batch}x{width}, "
                             f"got {list(coords.shape)}")
        if labels.shape != (n, batch):
            raise ValueError(f"expected {kind} labels {n}x{batch}, got {list(labels.shape)}")
        if mask.shape != (batch, n):
            raise ValueError(f"expected {kind} mask {batch}x{n}, got {list(mask.shape)}")
        return coords, labels, mask

    def append_boxes(self, boxes: torch.Tensor, labels: torch.Tensor,
                     mask: torch.Tensor | None = None) -> None:
        """Add boxes (NxBx4, labels NxB, mask BxN or None: no padding) after each prompt's
        valid boxes."""
        if self.box_embeddings is None:
            self.box_embeddings, self.box_labels, self.box_mask = boxes, labels, mask
            return
        if mask is None:
            mask = torch.zeros(boxes.shape[1], boxes.shape[0], dtype=torch.bool,
                               device=boxes.device)
        self.box_labels = concat_padded(self.box_labels[..., None], self.box_mask,
                                        labels[..., None], mask)[0][..., 0]
        self.box_embeddings, self.box_mask = concat_padded(self.box_embeddings, self.box_mask,
                                                           boxes, mask)

    def append_points(self, points: torch.Tensor, labels: torch.Tensor,
                      mask: torch.Tensor | None = None) -> None:
        """Add points (NxBx2, labels NxB, mask BxN or None: no padding) after each prompt's
        valid points."""
        if self.point_embeddings is None:
            self.point_embeddings, self.point_labels, self.point_mask = points, labels, mask
            return
        if mask is None:
            mask = torch.zeros(points.shape[1], points.shape[0], dtype=torch.bool,
                               device=points.device)
        self.point_labels = concat_padded(self.point_labels[..., None], self.point_mask,
                                          labels[..., None], mask)[0][..., 0]
        self.point_embeddings, self.point_mask = concat_padded(
            self.point_embeddings, self.point_mask, points, mask)


class SequenceGeometryEncoder(nn.Module):
    """Boxes and points of B prompts -> prompt tokens (with a CLS token) that have attended to
    the image.

    d_model: C. pos_enc: the sine encoding of normalised coordinates (C/2 channels per axis),
    with `encode_xy(x N, y N) -> (NxC/2, NxC/2)` and `encode_boxes(cx, cy, w, h each N) ->
    Nx(C+2)`. layer: one sequence-first transformer layer (`fusion.FusionEncoderLayer` with
    batch_first=False, no position at self-attention, position at the image keys), copied
    `num_layers` times, called as (tgt=, memory=, tgt_key_padding_mask=, pos=).
    roi_size: RoIAlign bins per box side.

    forward(geo_prompt, img_feats, img_sizes, img_pos_embeds=None):
    - geo_prompt: a `Prompt` of B prompts (Np points, Nb boxes, either may be 0).
    - img_feats: list of HWxBxC float32 token maps (seq first); the last is used.
    - img_sizes: list of (H, W), one per map.
    - img_pos_embeds: list of HWxBxC float32 position encodings, or None (zeros).
    -> (tokens (Np+Nb+1)xBxC float32, mask Bx(Np+Nb+1) bool, True at padding): each prompt's
    valid points, then its valid boxes, then the CLS token, then padding."""

    def __init__(self, d_model: int, pos_enc: nn.Module, layer: nn.Module, num_layers: int,
                 roi_size: int = 7) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"expected at least one transformer layer, got {num_layers}")
        d = d_model
        self.d_model = d
        self.pos_enc = pos_enc
        self.roi_size = roi_size
        self.label_embed = nn.Embedding(NUM_LABELS, d)
        self.cls_embed = nn.Embedding(1, d)
        self.points_direct_project = nn.Linear(2, d)
        self.points_pool_project = nn.Linear(d, d)
        self.points_pos_enc_project = nn.Linear(d, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, roi_size)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.final_proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.img_pre_norm = nn.LayerNorm(d)
        self.encode = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.encode_norm = nn.LayerNorm(d)

    def _encode_points(self, points: torch.Tensor, labels: torch.Tensor,
                       feat_map: torch.Tensor) -> torch.Tensor:
        """NxBx2 points, NxB labels, BxCxHxW map -> NxBxC tokens."""
        n, b = points.shape[:2]
        embed = self.points_direct_project(points)
        grid = points.transpose(0, 1)[:, :, None] * 2 - 1  # B x N x 1 x 2 in [-1, 1]
        sampled = F.grid_sample(feat_map, grid, align_corners=False)  # B x C x N x 1
        embed = embed + self.points_pool_project(sampled[..., 0].permute(2, 0, 1))
        enc_x, enc_y = self.pos_enc.encode_xy(points[..., 0].flatten(), points[..., 1].flatten())
        enc = torch.cat([enc_x.view(n, b, enc_x.shape[-1]), enc_y.view(n, b, enc_y.shape[-1])], -1)
        embed = embed + self.points_pos_enc_project(enc)
        return self.label_embed(labels.long()) + embed

    def _encode_boxes(self, boxes: torch.Tensor, labels: torch.Tensor,
                      feat_map: torch.Tensor) -> torch.Tensor:
        """NxBx4 boxes, NxB labels, BxCxHxW map -> NxBxC tokens."""
        n, b = boxes.shape[:2]
        h, w = feat_map.shape[-2:]
        embed = self.boxes_direct_project(boxes)
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        xyxy = (box_cxcywh_to_xyxy(boxes) * scale).float()  # in map cells
        pooled = roi_align(feat_map, list(xyxy.transpose(0, 1).unbind(0)), self.roi_size)
        pooled = self.boxes_pool_project(pooled).view(b, n, self.d_model).transpose(0, 1)
        embed = embed + pooled
        cx, cy, bw, bh = boxes.unbind(-1)
        enc = self.pos_enc.encode_boxes(cx.flatten(), cy.flatten(), bw.flatten(), bh.flatten())
        embed = embed + self.boxes_pos_enc_project(enc.view(n, b, enc.shape[-1]))
        return self.label_embed(labels.long()) + embed

    def forward(self, geo_prompt: Prompt, img_feats: list[torch.Tensor],
                img_sizes: list[tuple[int, int]],
                img_pos_embeds: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if geo_prompt.box_embeddings is None or geo_prompt.point_embeddings is None:
            raise ValueError("expected a Prompt built with boxes or points (N = 0 for none), "
                             "got one with neither")
        if len(img_feats) != len(img_sizes):
            raise ValueError(f"expected one size per map, got {len(img_sizes)} sizes for "
                             f"{len(img_feats)} maps")
        tokens = img_feats[-1]  # HW x B x C
        pos = img_pos_embeds[-1] if img_pos_embeds is not None else torch.zeros_like(tokens)
        h, w = img_sizes[-1]
        if tokens.shape[0] != h * w:
            raise ValueError(f"expected {h}x{w} = {h * w} image tokens, got {tokens.shape[0]}")
        feat_map = self.img_pre_norm(tokens).permute(1, 2, 0).reshape(-1, self.d_model, h, w)

        # Points, then boxes, then the CLS token, each prompt's valid tokens packed first
        embeds = self._encode_points(geo_prompt.point_embeddings, geo_prompt.point_labels,
                                     feat_map)
        box_embeds = self._encode_boxes(geo_prompt.box_embeddings, geo_prompt.box_labels,
                                        feat_map)
        embeds, mask = concat_padded(embeds, geo_prompt.point_mask, box_embeds,
                                     geo_prompt.box_mask)
        batch = embeds.shape[1]
        cls = self.cls_embed.weight.view(1, 1, self.d_model).expand(1, batch, self.d_model)
        embeds, mask = concat_padded(embeds, mask, cls, mask.new_zeros(batch, 1))

        # Project, then attend among the tokens and to the image
        embeds = self.norm(self.final_proj(embeds))
        for layer in self.encode:
            embeds = layer(tgt=embeds, memory=tokens, tgt_key_padding_mask=mask, pos=pos)
        return self.encode_norm(embeds), mask
