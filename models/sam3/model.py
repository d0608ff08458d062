"""The SAM 3 image model: text (and box) prompts -> every instance of the concept, with score,
box and mask; the official `Sam3Image` eval path (`forward_grounding`) and what the official
`Sam3Processor` does around it.

Work is split so that a job pays each part once:
- `embed_images`: Bx3xSxS prepared images -> the vision features (once per image);
- `encode_concepts`: N names -> text features (once per job, not per image);
- `detect`: P (image, concept) pairs, indices into the two above -> per pair Q queries with
  presence-weighted scores, boxes and mask logits; images x concepts run as one batch.

Shapes at full size (S = 1008, patch 14): vision features 256x72x72 (the fusion encoder's
level), FPN levels 256x288x288, 256x144x144, 256x72x72; Q = 200 queries; mask logits
288x288; text L = 32 tokens of 256.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .boxes import box_cxcywh_to_xyxy, inverse_sigmoid
from .geometry import Prompt
from .tokenizer import Tokenizer

# The official processor: pixels / 255, then (x - 0.5) / 0.5 per channel
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)
# The official processor's default confidence threshold (presence-weighted score)
SCORE_THRESHOLD = 0.5
# Keys of the official file that these jobs do not use: the video tracker (memory attention,
# memory encoder, its SAM-style heads). The detector's own keys are all used.
TRACKER_PREFIXES = ("tracker.",)
DETECTOR_PREFIX = "detector."


class VisionLanguageBackbone(nn.Module):
    """The official `SAM3VLBackbone` (no fusion): `vision_backbone` (ViT + dual neck) and
    `language_backbone` (text encoder), with `scalp` coarsest neck levels dropped."""

    def __init__(self, vision_backbone: nn.Module, language_backbone: nn.Module,
                 scalp: int = 1) -> None:
        super().__init__()
        self.vision_backbone = vision_backbone
        self.language_backbone = language_backbone
        self.scalp = scalp

    def forward_image(self, images: torch.Tensor, with_sam2: bool = False) -> dict:
        """float Bx3xSxS normalised images -> {"backbone_fpn": list of Bx256xHixWi (finest
        first, `scalp` coarsest dropped), "vision_pos_enc": the same shapes, "vision_features":
        the last level}; with_sam2 adds "sam2_backbone_fpn" (the neck's SAM 2 branch, the
        interactive head's input)."""
        fpn, pos, sam2_fpn, _ = self.vision_backbone(images, with_sam2=with_sam2)
        if self.scalp > 0:
            fpn, pos = fpn[: -self.scalp], pos[: -self.scalp]
            sam2_fpn = sam2_fpn[: -self.scalp] if sam2_fpn is not None else None
        out = {"backbone_fpn": fpn, "vision_pos_enc": pos, "vision_features": fpn[-1]}
        if with_sam2:
            out["sam2_backbone_fpn"] = sam2_fpn
        return out

    def forward_text(self, texts: list[str], device: torch.device) -> dict:
        """N strings -> {"language_features": LxNx256 (sequence first), "language_mask": NxL
        bool (True = padding), "language_embeds": LxNxW (before the projection)}."""
        mask, memory, embeds = self.language_backbone(texts, device=device)
        return {"language_features": memory, "language_mask": mask, "language_embeds": embeds}


@dataclass
class Detections:
    """`Sam3.detect` for P (image, concept) pairs, Q queries each: scores PxQ float
    (sigmoid(logit) x sigmoid(presence), the official processor's score), boxes PxQx4 float
    (cx, cy, w, h in 0..1 of the image), mask_logits PxQxhxw float (h = w = 288 at full size),
    presence P float (sigmoid of the presence logit)."""

    scores: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor
    presence: torch.Tensor


class Sam3(nn.Module):
    """SAM 3's image model; state-dict keys equal the `detector.*` part of `sam3.pt`.

    image_size: S, the square input (1008); the image is stretched to SxS (no aspect kept),
    as the official processor does."""

    checkpoint_wrappers = ("model",)
    checkpoint_ignored_prefixes = TRACKER_PREFIXES
    # samdata distill: a student replaces the vision trunk (`part_modules`); every other part
    # (the neck, text encoder, detector and heads: `head_prefixes`) is the teacher's, copied
    part_modules = {"image_encoder": "backbone.vision_backbone.trunk"}
    head_prefixes = ("backbone.vision_backbone.convs.", "backbone.vision_backbone.sam2_convs.",
                     "backbone.language_backbone.", "transformer.", "geometry_encoder.",
                     "segmentation_head.", "dot_prod_scoring.")
    mask_threshold = 0.0  # logits > 0, i.e. sigmoid > 0.5 as the official processor
    score_threshold = SCORE_THRESHOLD

    def __init__(self, backbone: VisionLanguageBackbone, transformer: nn.Module,
                 geometry_encoder: nn.Module, segmentation_head: nn.Module,
                 dot_prod_scoring: nn.Module, image_size: int = 1008) -> None:
        super().__init__()
        self.backbone = backbone
        self.transformer = transformer
        self.geometry_encoder = geometry_encoder
        self.segmentation_head = segmentation_head
        self.dot_prod_scoring = dot_prod_scoring
        self.image_size = image_size
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1),
                             persistent=False)

    @staticmethod
    def strip_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official file's keys -> ours: `detector.` dropped; `tracker.` keys kept as they
        are (declared unused, `checkpoint_ignored_prefixes`); any other key is kept so that
        the strict load names it."""
        return {k.removeprefix(DETECTOR_PREFIX): v for k, v in state.items()}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -- tokenizer ---------------------------------------------------------------------------

    def use_vocabulary(self, path: str | os.PathLike) -> None:
        """Read the BPE vocabulary (the official `bpe_simple_vocab_16e6.txt.gz`, or any file
        of that format) that `encode_concepts` tokenizes with."""
        self.backbone.language_backbone.use_tokenizer(Tokenizer(path))

    @property
    def vocab_size(self) -> int:
        """Rows of the text encoder's token table (49408 at full size)."""
        return self.backbone.language_backbone.vocab_size

    # -- images ------------------------------------------------------------------------------

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """Every image is stretched to SxS."""
        return self.image_size, self.image_size

    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 HxWx3 RGB -> (uint8 SxSx3, (S, S)): stretched to SxS, bilinear and
        antialiased in float, rounded back to uint8, as the official processor's torchvision
        resize of a uint8 image on a GPU (torchvision's native uint8 kernel, taken only on
        AVX2 CPUs, can differ by one level)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
        s = self.image_size
        if image.shape[:2] == (s, s):
            return np.ascontiguousarray(image), (s, s)
        if not image.flags.writeable:  # e.g. a view of an Arrow buffer: torch warns on those
            image = image.copy()
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        out = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        return out[0].permute(1, 2, 0).numpy(), (s, s)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) Bx3xSxS -> float Bx3xSxS in -1..1."""
        x = images.to(self.pixel_mean.dtype) / 255.0
        return (x - self.pixel_mean) / self.pixel_std

    def embed_images(self, images: torch.Tensor, with_sam2: bool = False) -> dict:
        """uint8 Bx3xSxS prepared images -> the backbone output (`VisionLanguageBackbone.
        forward_image`)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected Bx3x{self.image_size}x{self.image_size} images, got "
                             f"{tuple(images.shape)}")
        return self.backbone.forward_image(self.normalize(images.to(self.device)),
                                           with_sam2=with_sam2)

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """CxHxW of `embed_trunk` (1024x72x72 at full size)."""
        trunk = self.backbone.vision_backbone.trunk
        return (trunk.channel_list[-1], *trunk.grid)

    def embed_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 Bx3xSxS prepared images -> float32 BxCxHxW: the vision trunk's output, the one
        map the neck makes every FPN level from (what `samdata embed` stores for SAM 3 and a
        student's trunk learns; EfficientSAM3's stage-1 target)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected Bx3x{self.image_size}x{self.image_size} images, got "
                             f"{tuple(images.shape)}")
        return self.backbone.vision_backbone.trunk(self.normalize(images.to(self.device)))[-1]

    # -- text --------------------------------------------------------------------------------

    def encode_concepts(self, names: list[str]) -> dict:
        """N concept names -> text features (`VisionLanguageBackbone.forward_text`)."""
        if not names:
            raise ValueError("expected at least one concept name, got none")
        return self.backbone.forward_text(list(names), device=self.device)

    # -- detection ---------------------------------------------------------------------------

    def dummy_prompt(self, n: int) -> Prompt:
        """No boxes or points for n pairs (text-only prompting)."""
        return Prompt(box_embeddings=torch.zeros(0, n, 4, device=self.device),
                      box_mask=torch.zeros(n, 0, dtype=torch.bool, device=self.device))

    def box_prompt(self, boxes: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> Prompt:
        """Exemplar boxes for P pairs: boxes KxPx4 (cx, cy, w, h in 0..1), labels KxP (True =
        positive), mask PxK (True = padding)."""
        return Prompt(box_embeddings=boxes.to(self.device), box_labels=labels.to(self.device),
                      box_mask=mask.to(self.device))

    def detect(self, vision: dict, text: dict, image_ids: torch.Tensor, text_ids: torch.Tensor,
               prompt: Prompt | None = None) -> Detections:
        """P pairs: image_ids / text_ids long P (rows of `vision` and `text`); prompt: extra
        exemplars for the pairs (None: text only)."""
        image_ids = image_ids.to(self.device)
        text_ids = text_ids.to(self.device)
        n = len(image_ids)
        prompt = prompt if prompt is not None else self.dummy_prompt(n)
        levels = 1  # the fusion encoder reads the coarsest kept level only
        feats = [x[image_ids].flatten(2).permute(2, 0, 1) for x in vision["backbone_fpn"][-levels:]]
        pos = [x[image_ids].flatten(2).permute(2, 0, 1) for x in vision["vision_pos_enc"][-levels:]]
        sizes = [tuple(x.shape[-2:]) for x in vision["vision_pos_enc"][-levels:]]

        # Prompt: the concept's text tokens, then the geometry encoder's tokens (its cls token
        # even without boxes)
        txt = text["language_features"][:, text_ids]
        txt_mask = text["language_mask"][text_ids]
        geo, geo_mask = self.geometry_encoder(geo_prompt=prompt, img_feats=feats,
                                              img_sizes=sizes, img_pos_embeds=pos)
        tokens = torch.cat([txt, geo], dim=0)
        tokens_mask = torch.cat([txt_mask, geo_mask], dim=1)

        # Fusion encoder: image tokens attend to themselves and to the prompt
        memory = self.transformer.encoder(
            src=list(feats), src_key_padding_mask=None, src_pos=list(pos), prompt=tokens,
            prompt_pos=torch.zeros_like(tokens), prompt_key_padding_mask=tokens_mask,
            feat_sizes=sizes)

        # Decoder: Q queries with box refinement and the presence token
        decoder = self.transformer.decoder
        tgt = decoder.query_embed.weight.unsqueeze(1).repeat(1, n, 1)
        hs, reference, presence, _ = decoder(
            tgt=tgt, memory=memory["memory"], memory_key_padding_mask=memory["padding_mask"],
            pos=memory["pos_embed"], reference_boxes=None,
            level_start_index=memory["level_start_index"],
            spatial_shapes=memory["spatial_shapes"], valid_ratios=memory["valid_ratios"],
            tgt_mask=None, memory_text=tokens, text_attention_mask=tokens_mask, apply_dac=False)
        hs = hs.transpose(1, 2)  # layers x P x Q x C
        reference = reference.transpose(1, 2)
        logits = self.dot_prod_scoring(hs, tokens, tokens_mask)[-1, :, :, 0]  # P x Q
        offsets = decoder.bbox_embed(hs)[-1]
        boxes = (inverse_sigmoid(reference[-1]) + offsets).sigmoid()  # P x Q x 4
        presence_logit = presence[-1].reshape(n)  # layers x 1 x P -> P

        # Masks: the pixel decoder over the FPN levels, one mask per query
        seg = self.segmentation_head(
            backbone_feats=vision["backbone_fpn"], obj_queries=hs, image_ids=image_ids,
            encoder_hidden_states=memory["memory"], prompt=tokens, prompt_mask=tokens_mask)
        presence_prob = presence_logit.sigmoid()
        return Detections(scores=logits.sigmoid() * presence_prob[:, None], boxes=boxes,
                          mask_logits=seg["pred_masks"], presence=presence_prob)

    def instances(self, found: Detections, pair: int, orig_hw: tuple[int, int],
                  score_threshold: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official processor's output for pair `pair` of `found`: (scores K, boxes Kx4
        XYXY in original pixels, mask logits KxHxW at orig_hw, bilinear) for the K queries
        whose score is above the threshold (default `score_threshold`), in query order."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        keep = found.scores[pair] > threshold
        h, w = orig_hw
        boxes = box_cxcywh_to_xyxy(found.boxes[pair][keep])
        boxes = boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        logits = found.mask_logits[pair][keep]
        if len(logits):
            logits = F.interpolate(logits[:, None].float(), size=(h, w), mode="bilinear",
                                   align_corners=False)[:, 0]
        else:
            logits = logits.new_zeros(0, h, w)
        return found.scores[pair][keep], boxes, logits

