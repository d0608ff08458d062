"""The auto-labeling actor: everything-mode masks for each decoded image of a Ray batch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from models import OnePassModel, model_kind

from ..config import ComputeConfig, GeneratorConfig, ModelConfig
from ..runtime.batch_size import load_sized_model
from ..runtime.device import autocast
from ..shards.schema import usable_images
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
    point-grid generator; one-pass models (FastSAM) run theirs (the registry records which).
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
    ) -> None:
        compute = compute or ComputeConfig()
        self.model, self.device, self.precision, self.batch_size = load_sized_model(
            model, compute, storage_options, num_threads, device, gpu_share)
        one_pass = model_kind(model.name) is OnePassModel
        if one_pass:
            self.generator = OnePassGenerator(self.model, generator, batch_size=self.batch_size)
        else:
            self.generator = MaskGenerator(self.model, generator, batch_size=self.batch_size,
                                           compile=model.compile)
        self.model_name = model.name
        self.sha256 = self.model.checkpoint_sha256 or ""
        self.settings_json = json.dumps(generator.settings(one_pass), sort_keys=True)

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
                return [f"out of memory in everything mode for an image of {w}x{h} "
                        f"({w * h} pixels) on {self.device}: lower input.max_image_pixels or "
                        f"generator.upscale_batch_size, or give the actor more memory"]
        _release(self.device)
        return [found for image in images for found in self._generate([image])]


# What running out of memory raises (host allocations, CUDA), caught per image
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)


def _release(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
