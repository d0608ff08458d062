"""What a registry model can do, as typing Protocols; the registry records one per entry.

Three kinds exist today:
- `PromptableModel`: an image encoder whose embedding a prompt encoder + mask decoder turn
  into masks (SAM, MobileSAM, EfficientViT-SAM, EfficientSAM). Embeddings, prompted masks and
  the point-grid everything mode all run on it.
  `HighResPromptableModel` (SAM 2) is a PromptableModel whose decoder also needs
  high-resolution features of the image: callers that decode check for it (isinstance) and
  embed with `embed_images_with_features`; `embed_images` alone still gives the embedding.
- `OnePassModel`: a network that segments every instance of an image in one pass (FastSAM's
  YOLOv8-seg). It has no image embedding; everything mode runs its detections, and prompted
  masks select among them.
- `ConceptModel`: text prompts -> every instance of each named concept, with scores, boxes
  and masks (SAM 3). Concept labeling runs on it.
  `TrunkConceptModel` (SAM 3 and its students) is a ConceptModel whose vision side starts
  from one map of its trunk (`embed_trunk`): the map `samdata embed` stores for it and stage 1
  of `samdata distill` trains a student trunk on.

`image_embedding` is the map a model is embedded and distilled by, whatever its kind.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class PromptableModel(Protocol):
    """A SAM-design model. Shapes: S = `image_size`, CxHxW = `embedding_shape`."""

    image_size: int
    mask_threshold: float

    @property
    def device(self) -> torch.device: ...

    @property
    def embedding_shape(self) -> tuple[int, int, int]: ...

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the resized, unpadded image the encoder sees for an image of orig_hw."""

    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 HxWx3 RGB -> (SxSx3 encoder input (uint8, or float where the official
        preprocessing resizes in float), (h, w) before padding). CPU work."""

    def embed_images(self, images: torch.Tensor, input_hws: torch.Tensor) -> torch.Tensor:
        """Bx3xSxS prepared images, int Bx2 input_hws -> float BxCxHxW embeddings."""

    def transform_coords(self, coords: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """...x2 (x, y) original pixels -> float64 ...x2 in the prompt frame."""

    def transform_boxes(self, boxes: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Bx4 XYXY original pixels -> float64 Bx4 in the prompt frame."""

    def decode(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor | None = None,
               point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None, multimask_output: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the prompt frame -> (low-res logits PxCxhxw, IoU predictions PxC)."""

    def postprocess_masks(self, masks: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Low-res logits BxCxhxw -> BxCxHxW logits at orig_hw."""


@runtime_checkable
class HighResPromptableModel(PromptableModel, Protocol):
    """A PromptableModel whose decoder needs high-resolution image features beside the
    embedding (SAM 2: [Bx32x256x256, Bx64x128x128], `high_res_shapes`). Its `decode` takes
    them as `high_res_features`, with the same rows as `image_embeddings` (one per image, or
    one per prompt)."""

    @property
    def high_res_shapes(self) -> list[tuple[int, int, int]]: ...

    def embed_images_with_features(self, images: torch.Tensor, input_hws: torch.Tensor
                                   ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Bx3xSxS prepared images -> {"image_embed": BxCxHxW (what `embed_images` gives),
        "high_res_feats": list of BxCixHixWi}."""

    def decode(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor | None = None,
               point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None, multimask_output: bool = True,
               high_res_features: list[torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """As PromptableModel.decode, with the images' high-res features (required)."""


@runtime_checkable
class OnePassModel(Protocol):
    """A one-pass instance segmenter (FastSAM). forward: float Bx3xHxW in [0, 1] (H and W
    multiples of 32) -> (raw predictions, mask prototypes); its module's `letterbox` and
    `masks_native` are the official pre- and post-processing."""

    image_size: int
    mask_threshold: float

    @property
    def device(self) -> torch.device: ...

    def input_hw(self, orig_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the resized, unpadded image the network sees at `image_size`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class ConceptModel(Protocol):
    """A model that finds every instance of a concept named in text (SAM 3). The text side is
    encoded once per job (`encode_concepts`), the image side once per image (`embed_images`);
    `detect` runs (image, concept) pairs of the two; `instances` is the official processor's
    selection and resize for one pair. S = `image_size` (every image stretched to SxS)."""

    image_size: int
    mask_threshold: float
    score_threshold: float

    @property
    def device(self) -> torch.device: ...

    def use_vocabulary(self, path) -> None:
        """Read the tokenizer's vocabulary file (given by the user beside the checkpoint)."""

    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 HxWx3 RGB -> (uint8 SxSx3, (S, S)). CPU work."""

    def embed_images(self, images: torch.Tensor) -> dict:
        """uint8 Bx3xSxS prepared images -> vision features (model-specific dict)."""

    def encode_concepts(self, names: list[str]) -> dict:
        """N concept names -> text features (model-specific dict)."""

    def detect(self, vision: dict, text: dict, image_ids: torch.Tensor, text_ids: torch.Tensor,
               prompt=None):
        """P (image, concept) pairs (long P indices into both) -> detections of Q queries each
        (scores PxQ, boxes PxQx4, mask_logits PxQxhxw)."""

    def instances(self, found, pair: int, orig_hw: tuple[int, int],
                  score_threshold: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores K, boxes Kx4 XYXY original pixels, mask logits KxHxW) of one pair."""


@runtime_checkable
class TrunkConceptModel(ConceptModel, Protocol):
    """A ConceptModel whose neck makes every feature level from one trunk map (SAM 3: the
    ViT's 1024x72x72 output at 1008 px, `embedding_shape`), so that a student trunk giving
    that map takes the rest of the model unchanged."""

    @property
    def embedding_shape(self) -> tuple[int, int, int]: ...

    def embed_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 Bx3xSxS prepared images -> float BxCxHxW trunk map."""


def image_embedding(model: PromptableModel | TrunkConceptModel, images: torch.Tensor,
                    input_hws: torch.Tensor) -> torch.Tensor:
    """The map `samdata embed` stores and stage 1 distills: Bx3xSxS prepared images, int Bx2
    input_hws -> float BxCxHxW (`embedding_shape`): a PromptableModel's `embed_images`, a
    TrunkConceptModel's `embed_trunk` (its images are stretched: input_hws are all SxS)."""
    if isinstance(model, ConceptModel):
        if not isinstance(model, TrunkConceptModel):
            raise TypeError(f"expected a concept model with a trunk map (embed_trunk), got "
                            f"{type(model).__name__}")
        return model.embed_trunk(images)
    return model.embed_images(images, input_hws)


ModelKind = type[PromptableModel] | type[OnePassModel] | type[ConceptModel]
