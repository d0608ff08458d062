"""The `samdata segment` actor: one mask per prompt for each decoded image of a Ray batch, and
`build_prompter`, the prompter of any registry model (also used by `samdata evaluate`)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from models import OnePassModel, model_kind

from ..config import ComputeConfig, GeneratorConfig, ModelConfig, PromptsConfig
from ..everything.runlength import masks_to_annotations
from ..runtime.batch_size import load_sized_model
from ..runtime.device import autocast
from ..shards.schema import usable_images
from .fastsam import FastSamPrompter
from .prompts import CARRIED, Prompter, PromptSet
from .sam import SamPrompter
from .sources import load_prompt_source


def build_prompter(net: nn.Module, batch_size: int, multimask: bool = True,
                   decoder_batch_size: int = 64, upscale_batch_size: int = 64,
                   generator: GeneratorConfig | None = None) -> Prompter:
    """The prompter of registry model `net` (built by build_model): SamPrompter for promptable
    models, FastSamPrompter for one-pass ones (the registry records which). generator:
    stability_score_offset, and FastSAM's detection_* settings."""
    generator = generator or GeneratorConfig()
    if model_kind(net.model_name) is OnePassModel:
        return FastSamPrompter(net, generator, batch_size=batch_size,
                               upscale_batch_size=upscale_batch_size)
    return SamPrompter(net, multimask=multimask, batch_size=batch_size,
                       decoder_batch_size=decoder_batch_size,
                       upscale_batch_size=upscale_batch_size,
                       stability_score_offset=generator.stability_score_offset)


def segment_results(prompts: list[dict], chunk_results: dict[int, dict], hw: tuple[int, int]
                    ) -> list[dict]:
    """An image's prompt dicts and the mask fields of each (by prompt number: segmentation,
    area, bbox, predicted_iou, stability_score) -> its result structs (schema
    SEGMENT_ANNOTATION_TYPE), `id` = the prompt's number within the image."""
    h, w = hw
    out = []
    for k, prompt in enumerate(prompts):
        mask = chunk_results[k]
        out.append({
            "id": k, **mask,
            "point_coords": prompt["points"], "crop_box": [0.0, 0.0, float(w), float(h)],
            "prompt_box": prompt["box"], "point_labels": prompt["labels"],
            **{name: prompt[name] for name in CARRIED}})
    return out


class Segmenter:
    """batch (prepared rows in "original" mode: "pixels" an object array of uint8 HxWx3,
    "annotations_json", "key", "status", "is_end", ...) -> the batch without pixels and
    annotations_json, plus "annotations" (object array: per row a list of result dicts, one
    per prompt, schema.SEGMENT_ANNOTATION_TYPE), "model", "checkpoint_sha256", "settings"
    (JSON: the prompt settings that applied). A row whose prompts cannot be read becomes an
    error row naming why; an image the prompt source does not list gets no results.

    model, prompts, generator, compute: the job's config sections (generator: FastSAM's
    detection_* and the stability offset); model.batch_size "auto" fits the device."""

    def __init__(
        self,
        model: ModelConfig,
        prompts: PromptsConfig,
        generator: GeneratorConfig | None = None,
        compute: ComputeConfig | None = None,
        storage_options: dict | None = None,
        num_threads: int | None = None,
        device: str = "auto",
        gpu_share: float = 1.0,
    ) -> None:
        compute = compute or ComputeConfig()
        generator = generator or GeneratorConfig()
        self.source = load_prompt_source(prompts, storage_options)
        self.model, self.device, self.precision, batch_size = load_sized_model(
            model, compute, storage_options, num_threads, device, gpu_share)
        self.prompter = build_prompter(self.model, batch_size, prompts.multimask,
                                       prompts.decoder_batch_size, prompts.upscale_batch_size,
                                       generator)
        one_pass = model_kind(model.name) is OnePassModel
        settings = {"source": prompts.source, "path": prompts.path, "use": prompts.use}
        settings.update(generator.settings(one_pass=True) if one_pass
                        else {"multimask": prompts.multimask})
        self.settings_json = json.dumps(settings, sort_keys=True)
        self.model_name = model.name
        self.sha256 = self.model.checkpoint_sha256 or ""

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["is_end"])
        annotations = np.empty(n, dtype=object)
        annotations[:] = [[] for _ in range(n)]
        status, error = batch["status"].copy(), batch["error"].copy()
        # Each image's prompts from the source (a bad one makes an error row)
        rows, per_image = [], []
        for i in usable_images(batch):
            try:
                found = self.source(str(batch["key"][i]), str(batch["annotations_json"][i]))
            except ValueError as e:
                status[i], error[i] = "error", f"prompts: {e}"
                continue
            if found:
                rows.append(i)
                per_image.append(found)
        # One mask per prompt, the prompts of all images together
        if rows:
            images = [np.ascontiguousarray(batch["pixels"][i]) for i in rows]
            prompts = PromptSet.from_prompts(per_image)
            first = np.concatenate([[0], np.cumsum([len(p) for p in per_image])])
            fields: list[dict[int, dict]] = [{} for _ in rows]
            with autocast(self.device, self.precision):
                for chunk in self.prompter.iter_masks(images, prompts):
                    found = masks_to_annotations(chunk.masks)
                    for k, mask, iou, stab in zip(chunk.index, found, chunk.iou,
                                                  chunk.stability, strict=True):
                        mask.update(predicted_iou=float(iou),
                                    stability_score=None if math.isnan(stab) else float(stab))
                        fields[chunk.image][int(k - first[chunk.image])] = mask
            for j, i in enumerate(rows):
                annotations[i] = segment_results(per_image[j], fields[j], images[j].shape[:2])
        result = {k: v for k, v in batch.items() if k not in ("pixels", "annotations_json")}
        result.update(annotations=annotations, status=status, error=error,
                      model=np.full(n, self.model_name, dtype=object),
                      checkpoint_sha256=np.full(n, self.sha256, dtype=object),
                      settings=np.full(n, self.settings_json, dtype=object))
        return result
