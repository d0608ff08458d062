"""Concept labels (SAM 3): for each image and each concept the job names, every instance the
model finds above the score threshold, as SA-1B annotations with a category.

Work per job, per image and per pair is paid once each: the concepts' text features are
computed when the generator is built (not per image); each image goes through the vision
backbone once, in batches of `batch_size`; the (image, concept) pairs of a batch go through the
fusion encoder, decoder and mask head together, `pairs_per_batch` at a time.

Field by field:
- `segmentation`, `area`, `bbox`: from the binary mask at the original size (mask logits
  resized bilinearly, > 0: sigmoid > 0.5 as the official processor), as every generator here;
  `bbox` is the box of the mask.
- `score` and `predicted_iou`: the official processor's score, sigmoid(query logit) x
  sigmoid(presence logit) (there is no IoU head); `stability_score`: from the mask logits with
  the SAM formula (reported, not a filter).
- `category`: the concept name as given; `category_id`: its 1-based position in the job's
  concept list (stable across shards and reruns of the job).
- `point_coords`: empty (no point prompts); `crop_box`: the whole image.
Instances of one image come concept by concept (in the job's order), each in query order.
"""

from __future__ import annotations

import numpy as np
import torch

from models import ConceptModel
from models.transforms import check_image

from ..runtime.batch_size import upscale_chunk
from .full_image import full_image_annotations


class ConceptGenerator:
    """Concept-labeling annotations of a ConceptModel (SAM 3).

    concepts: the names, in the job's order (ids 1..N); score_threshold: keep instances
    scoring above it (None: the model's default, the official processor's 0.5); batch_size:
    images per vision-backbone call; pairs_per_batch: (image, concept) pairs per detector call;
    upscale_batch_size: full-size masks made at once, at most (fewer for large images, see
    runtime.batch_size.upscale_chunk); stability_score_offset: as the SAM generators'."""

    def __init__(self, model: torch.nn.Module, concepts: list[str],
                 score_threshold: float | None = None, batch_size: int = 1,
                 pairs_per_batch: int = 16, upscale_batch_size: int = 64,
                 stability_score_offset: float = 1.0) -> None:
        if not isinstance(model, ConceptModel):
            raise ValueError(f"expected a concept model (models.ConceptModel), got "
                             f"{type(model).__name__}")
        if not concepts:
            raise ValueError("expected at least one concept, got none")
        if batch_size < 1 or pairs_per_batch < 1:
            raise ValueError(f"expected batch_size and pairs_per_batch >= 1, got {batch_size} "
                             f"and {pairs_per_batch}")
        self.model = model.eval()
        self.concepts = list(concepts)
        self.score_threshold = (model.score_threshold if score_threshold is None
                                else float(score_threshold))
        self.batch_size = batch_size
        self.pairs_per_batch = pairs_per_batch
        self.upscale_batch_size = upscale_batch_size
        self.stability_score_offset = stability_score_offset
        with torch.inference_mode():
            self.text = model.encode_concepts(self.concepts)  # once per job

    @torch.inference_mode()
    def generate(self, images: list[np.ndarray], encode: bool = True) -> list[list[dict]]:
        """RGB uint8 HxWx3 images -> per image, SA-1B annotation dicts with `category`,
        `category_id` and `score` (without `id`). segmentation: COCO compressed RLE with
        `encode`, else {"size": [H, W], "runs": int32 COCO counts} for
        `coco_rle.finish_annotations` (as the other generators)."""
        for image in images:
            check_image(image)
        out: list[list[dict]] = []
        for start in range(0, len(images), self.batch_size):
            out += self._batch(images[start : start + self.batch_size], encode)
        return out

    def _batch(self, images: list[np.ndarray], encode: bool) -> list[list[dict]]:
        model = self.model
        prepared = np.stack([model.prepare_image(image)[0] for image in images])
        pixels = torch.from_numpy(prepared).permute(0, 3, 1, 2).to(model.device)
        vision = model.embed_images(pixels)
        n_concepts = len(self.concepts)
        image_ids = torch.arange(len(images)).repeat_interleave(n_concepts)
        text_ids = torch.arange(n_concepts).repeat(len(images))
        anns: list[list[dict]] = [[] for _ in images]
        for start in range(0, len(image_ids), self.pairs_per_batch):
            stop = start + self.pairs_per_batch
            found = model.detect(vision, self.text, image_ids[start:stop], text_ids[start:stop])
            for p in range(len(image_ids[start:stop])):
                i, c = int(image_ids[start + p]), int(text_ids[start + p])
                anns[i] += self._annotations(images[i], found, p, c, encode)
        return anns

    def _annotations(self, image: np.ndarray, found, pair: int, concept: int,
                     encode: bool) -> list[dict]:
        """One pair's instances -> annotations; full-size masks a chunk at a time on the
        device, run-length encoded there (only change points, areas and boxes come back)."""
        h, w = image.shape[:2]
        keep = torch.nonzero(found.scores[pair] > self.score_threshold).flatten()  # query order
        if not len(keep):
            return []
        scores = found.scores[pair][keep].float().cpu().tolist()
        step = upscale_chunk(self.upscale_batch_size, (h, w))
        chunks = (torch.nn.functional.interpolate(
            found.mask_logits[pair][keep[s : s + step]][:, None].float(), size=(h, w),
            mode="bilinear", align_corners=False)[:, 0] for s in range(0, len(keep), step))
        anns = full_image_annotations(chunks, scores, (h, w), self.model.mask_threshold,
                                      self.stability_score_offset, encode)
        name = self.concepts[concept]
        for ann in anns:  # the instance's score is its predicted IoU
            ann.update(category_id=concept + 1, category=name, score=ann["predicted_iou"])
        return anns
