"""The auto-labeling actor: everything-mode masks for each decoded image of a Ray batch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from models import ConceptModel, OnePassModel, model_kind

from ..config import ComputeConfig, ConceptPromptsConfig, GeneratorConfig, ModelConfig
from ..runtime.batch_size import load_sized_model
from ..runtime.device import autocast
from ..shards.schema import CONCEPTS_SETTING, usable_images
from .concepts import ConceptGenerator
from .grid import MaskGenerator
from .one_pass import OnePassGenerator


class AutoLabeler:
    """batch (prepared rows in "original" mode: "pixels" an object array of uint8 HxWx3,
    "status", "is_end", ...) -> the batch without pixels, plus "annotations" (object array: per
    row a list of SA-1B annotation dicts, `id` = index within the image), "model",
    "checkpoint_sha256", "settings" (JSON: the generator parameters that applied to this model).

    The annotations leave unfinished: segmentation {"size": [H, W], "runs": int32 COCO counts}
    (`coco_rle`); the writer stage (`masks_table`) builds the COCO strings on CPU workers, so
    the actor's thread does no per-mask string work while the device waits.

    model, generator, compute: the job's config sections. Promptable models (SAM family) run the
    point-grid generator; one-pass models (FastSAM) run theirs (the registry records which);
    concept models (SAM 3) label `concepts` (prompts.concepts resolved to names, in order) with
    the `prompts` section's settings, and their settings JSON names the concept list.
    model.batch_size "auto" fits the device and is capped by compute.ray_batch_size, as for
    embed."""

    def __init__(
        self,
        model: ModelConfig,
        generator: GeneratorConfig,
        compute: ComputeConfig | None = None,
        storage_options: dict | None = None,
        num_threads: int | None = None,
        device: str = "auto",
        gpu_share: float = 1.0,
        prompts: ConceptPromptsConfig | None = None,
        concepts: list[str] | None = None,
    ) -> None:
        compute = compute or ComputeConfig()
        self.model, self.device, self.precision, self.batch_size = load_sized_model(
            model, compute, storage_options, num_threads, device, gpu_share)
        kind = model_kind(model.name)
        one_pass = kind is OnePassModel
        if kind is ConceptModel:
            prompts = prompts or ConceptPromptsConfig()
            with autocast(self.device, self.precision):
                self.generator = ConceptGenerator(
                    self.model, concepts or [], score_threshold=prompts.score_threshold,
                    batch_size=self.batch_size, pairs_per_batch=prompts.pairs_per_batch,
                    upscale_batch_size=prompts.upscale_batch_size,
                    stability_score_offset=generator.stability_score_offset)
            self.settings_json = json.dumps(concept_settings(prompts, concepts or []),
                                            sort_keys=True)
            self.oom_hint = ("concept labeling", "prompts.upscale_batch_size or "
                             "prompts.pairs_per_batch")
        elif one_pass:
            self.generator = OnePassGenerator(self.model, generator, batch_size=self.batch_size)
        else:
            self.generator = MaskGenerator(self.model, generator, batch_size=self.batch_size,
                                           compile=model.compile)
        self.model_name = model.name
        self.sha256 = self.model.checkpoint_sha256 or ""
        if kind is not ConceptModel:
            self.settings_json = json.dumps(generator.settings(one_pass), sort_keys=True)
            self.oom_hint = ("everything mode", "generator.upscale_batch_size")

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["is_end"])
        annotations = np.empty(n, dtype=object)
        annotations[:] = [[] for _ in range(n)]
        todo = usable_images(batch)
        status, error = batch["status"].copy(), batch["error"].copy()
        if len(todo):
            images = [np.ascontiguousarray(batch["pixels"][i]) for i in todo]
            for i, anns in zip(todo, self._generate(images), strict=True):
                if isinstance(anns, str):  # this image alone does not fit in memory
                    status[i], error[i] = "error", anns
                else:
                    annotations[i] = [{"id": k, **a} for k, a in enumerate(anns)]
        result = {k: v for k, v in batch.items() if k != "pixels"}
        result["status"], result["error"] = status, error
        result["annotations"] = annotations
        result["model"] = np.full(n, self.model_name, dtype=object)
        result["checkpoint_sha256"] = np.full(n, self.sha256, dtype=object)
        result["settings"] = np.full(n, self.settings_json, dtype=object)
        return result

    def _generate(self, images: list[np.ndarray]) -> list[list[dict] | str]:
        """Annotations per image; when the batch runs out of memory, each image again on its
        own, and an image that still does not fit gets an error message instead."""
        try:
            with autocast(self.device, self.precision):
                return self.generator.generate(images, encode=False)
        except OUT_OF_MEMORY:
            if len(images) == 1:
                h, w = images[0].shape[:2]
                mode, knobs = self.oom_hint
                return [f"out of memory in {mode} for an image of {w}x{h} ({w * h} pixels) "
                        f"on {self.device}: lower input.max_image_pixels or {knobs}, or give "
                        f"the actor more memory"]
        _release(self.device)
        return [found for image in images for found in self._generate([image])]


def concept_settings(prompts: ConceptPromptsConfig, concepts: list[str]) -> dict:
    """The parameters that decide concept labels (stored with them): the concept list in
    order (schema.CONCEPTS_SETTING: category_id = position + 1) and the score threshold."""
    return {CONCEPTS_SETTING: list(concepts), "score_threshold": prompts.score_threshold}


# What running out of memory raises (host allocations, CUDA), caught per image
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)


def _release(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
