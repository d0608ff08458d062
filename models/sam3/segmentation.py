"""SAM 3's segmentation head: a pixel decoder over the neck's maps and the fused image tokens,
then per-query instance masks and one semantic mask (the official `UniversalSegmentationHead`
as the image model builds it: prompt cross-attention on, no presence head, masks of the last
decoder layer only).

Step by step, for B prompts:
- the encoder's image tokens (the stride-14 level's HW tokens first, LxBxC) attend to the prompt
  through a pre-norm residual cross-attention (`cross_attn_norm`, `cross_attend_prompt`);
- they replace the coarsest neck map, and the pixel decoder climbs the finer maps: at each step
  the coarser result is upsampled (nearest) to the next map's size and added to it, then a
  3x3 conv, GroupNorm and ReLU (`conv_layers.i`, `norms.i`, coarse to fine). The image model
  passes three maps (4x, 2x, 1x the token grid), so two of the three conv stages run; the third
  only holds weights;
- `instance_seg_head` (1x1 conv) gives per-pixel embeddings; each query's 3-layer MLP
  (`mask_predictor.mask_embed`) dotted with them gives its mask logits;
  `semantic_seg_head` (1x1 conv to one channel) gives the semantic logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_DECODER_GROUPS = 8  # the official GroupNorm groups of every pixel decoder stage


class PixelDecoder(nn.Module):
    """Feature pyramid top-down pass with nearest upsampling.

    forward(backbone_feats: list, fine to coarse, of BxCxHixWi float32 (C = hidden_dim; a map
    with batch 1 broadcasts against batch B)) -> BxCxH0xW0 float32 at the finest map's size.
    Stage i (0 = the first from the coarse end) uses `conv_layers[i]` and `norms[i]`; it takes
    len(backbone_feats) - 1 <= num_upsampling_stages stages."""

    def __init__(self, hidden_dim: int, num_upsampling_stages: int,
                 num_groups: int = PIXEL_DECODER_GROUPS) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_upsampling_stages = num_upsampling_stages
        self.conv_layers = nn.ModuleList(
            nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1) for _ in range(num_upsampling_stages))
        self.norms = nn.ModuleList(
            nn.GroupNorm(num_groups, hidden_dim) for _ in range(num_upsampling_stages))
        self.out_dim = hidden_dim

    def forward(self, backbone_feats: list[torch.Tensor]) -> torch.Tensor:
        if not 1 <= len(backbone_feats) <= self.num_upsampling_stages + 1:
            raise ValueError(f"expected 1 to {self.num_upsampling_stages + 1} maps, "
                             f"got {len(backbone_feats)}")
        x = backbone_feats[-1]
        for stage, finer in enumerate(reversed(backbone_feats[:-1])):
            x = finer + F.interpolate(x, size=finer.shape[-2:], mode="nearest")
            x = F.relu(self.norms[stage](self.conv_layers[stage](x)))
        return x


class MaskPredictor(nn.Module):
    """Query embeddings x pixel embeddings -> mask logits.

    mask_embed: the query MLP (the official 3 layers hidden_dim -> hidden_dim -> hidden_dim ->
    mask_dim, `mask_embed.layers.i`). forward(obj_queries BxQxC, pixel_embed BxDxHxW, D =
    mask_dim) -> BxQxHxW float32."""

    def __init__(self, mask_embed: nn.Module) -> None:
        super().__init__()
        self.mask_embed = mask_embed

    def forward(self, obj_queries: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
        if obj_queries.ndim != 3 or pixel_embed.ndim != 4:
            raise ValueError(f"expected queries BxQxC and pixel embeddings BxDxHxW, got "
                             f"{list(obj_queries.shape)} and {list(pixel_embed.shape)}")
        return torch.einsum("bqc,bchw->bqhw", self.mask_embed(obj_queries), pixel_embed)


class UniversalSegmentationHead(nn.Module):
    """Instance masks of the decoder's queries and a semantic mask, from the neck's maps and
    the encoder's prompt-fused image tokens.

    hidden_dim: C. pixel_decoder: a `PixelDecoder` (its `out_dim` channels). mask_predictor: a
    `MaskPredictor`. cross_attend_prompt: seq-first attention C -> C called as
    (query=, key=, value=, key_padding_mask=) and returning (output, weights or None).

    forward(backbone_feats, obj_queries, image_ids, encoder_hidden_states, prompt, prompt_mask):
    - backbone_feats: the neck's maps fine to coarse, each IxCxHixWi float32 (I images; the
      image model's three: 4x, 2x and 1x the token grid h x w). The coarsest is only read for
      its size: the encoder's tokens take its place.
    - obj_queries: LxBxQxC float32, the decoder's queries of every layer (the last is used).
    - image_ids: B long, the image of each prompt (ignored when I == 1: broadcast).
    - encoder_hidden_states: (hw + ...)xBxC float32, the encoder's output, image tokens first.
    - prompt: PxBxC float32; prompt_mask: BxP bool (True: padding).
    -> {"pred_masks": BxQxH0xW0, "semantic_seg": Bx1xH0xW0 (logits, float32, at the finest
    map's size), "presence_logit": None (the image model has no presence head here)}."""

    instance_keys = ("pred_masks",)  # the outputs with one entry per query

    def __init__(self, hidden_dim: int, pixel_decoder: PixelDecoder,
                 mask_predictor: MaskPredictor, cross_attend_prompt: nn.Module) -> None:
        super().__init__()
        self.d_model = hidden_dim
        self.pixel_decoder = pixel_decoder
        self.mask_predictor = mask_predictor
        self.cross_attend_prompt = cross_attend_prompt
        self.cross_attn_norm = nn.LayerNorm(hidden_dim)
        self.semantic_seg_head = nn.Conv2d(pixel_decoder.out_dim, 1, kernel_size=1)
        self.instance_seg_head = nn.Conv2d(pixel_decoder.out_dim, hidden_dim, kernel_size=1)

    def _embed_pixels(self, backbone_feats: list[torch.Tensor], image_ids: torch.Tensor,
                      encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The pixel decoder over each prompt's maps, its coarsest map replaced by the encoder's
        image tokens -> BxCxH0xW0."""
        if backbone_feats[0].shape[0] > 1:
            image_ids = image_ids.to(backbone_feats[0].device)
            feats = [feat[image_ids] for feat in backbone_feats]
        else:  # one image: its maps broadcast over the prompts
            feats = list(backbone_feats)
        h, w = backbone_feats[-1].shape[-2:]
        tokens = encoder_hidden_states.permute(1, 2, 0)[..., :h * w]  # B x C x hw
        feats[-1] = tokens.reshape(-1, *backbone_feats[-1].shape[1:])
        return self.pixel_decoder(feats)

    def forward(self, backbone_feats: list[torch.Tensor], obj_queries: torch.Tensor,
                image_ids: torch.Tensor, encoder_hidden_states: torch.Tensor,
                prompt: torch.Tensor, prompt_mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
        # Image tokens attend to the prompt (pre-norm, residual)
        attended = self.cross_attend_prompt(query=self.cross_attn_norm(encoder_hidden_states),
                                            key=prompt, value=prompt,
                                            key_padding_mask=prompt_mask)[0]
        encoder_hidden_states = attended + encoder_hidden_states

        pixel_embed = self._embed_pixels(backbone_feats, image_ids, encoder_hidden_states)
        instance_embeds = self.instance_seg_head(pixel_embed)
        return {
            "pred_masks": self.mask_predictor(obj_queries[-1], instance_embeds),
            "semantic_seg": self.semantic_seg_head(pixel_embed),
            "presence_logit": None,
        }
