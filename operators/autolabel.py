"""The auto-labeling actor: everything-mode masks for each decoded image of a Ray batch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from .batch_size import CPU_BATCH, choose_encoder_batch_size
from .embed import autocast, load_model
from .mask_generator import AMGSettings, MaskGenerator
from .one_pass import OnePassGenerator, OnePassSettings


def _pick(cls: type, values: dict, renames: dict[str, str] | None = None):
    """Build settings dataclass `cls` from the generator config's values (its fields, some
    under other names in the config)."""
    renames = renames or {}
    names = cls.__dataclass_fields__
    return cls(**{f: values[renames.get(f, f)] for f in names if renames.get(f, f) in values})


# One-pass models' settings live in the config as detection_* fields.
ONE_PASS_NAMES = {"conf": "detection_conf", "iou": "detection_iou", "imgsz": "detection_imgsz"}


class AutoLabeler:
    """batch {"pixels": object array of uint8 HxWx3 originals, "status", "kind", ...} -> the
    batch without pixels, plus "annotations" (object array: per row a list of SA-1B annotation
    dicts, `id` = index within the image), "model", "checkpoint_sha256", "settings" (JSON: the
    parameters that applied to this model).

    Prompt-based models (SAM family) run the point-grid generator; models that segment
    everything in one pass (they offer `segment_everything`, e.g. FastSAM) run theirs."""

    def __init__(
        self,
        model_name: str,
        settings: dict,
        checkpoint: str | None = None,
        sha256: str | None = None,
        seed: int | None = None,
        precision: str = "auto",
        encoder_batch_size: int | str = 4,
        decoder_batch_size: int | None = None,
        upscale_batch_size: int = 64,
        storage_options: dict | None = None,
        num_threads: int | None = None,
        compile_encoder: bool = False,
        channels_last: bool = False,
        batch_limit: int = 64,
        device: str = "auto",
        gpu_share: float = 1.0,
    ) -> None:
        self.model, self.device, self.precision = load_model(
            model_name, checkpoint, sha256, seed, precision, storage_options, num_threads,
            compile_encoder, channels_last, device)
        if encoder_batch_size == "auto":  # crops per encoder call that fit the device
            encoder_batch_size = (
                choose_encoder_batch_size(self.model, self.device, self.precision, batch_limit,
                                          gpu_share)
                if hasattr(self.model, "embed_images") else CPU_BATCH)
        if hasattr(self.model, "segment_everything"):
            self.settings = _pick(OnePassSettings, settings, ONE_PASS_NAMES)
            self.generator = OnePassGenerator(
                self.model, self.settings, mask_batch_size=upscale_batch_size,
                image_batch_size=int(encoder_batch_size))
        else:
            self.settings = _pick(AMGSettings, settings)
            self.generator = MaskGenerator(self.model, self.settings,
                                           encoder_batch_size=int(encoder_batch_size),
                                           decoder_batch_size=decoder_batch_size,
                                           upscale_batch_size=upscale_batch_size,
                                           pad_encoder_batches=compile_encoder)
        self.model_name = model_name
        self.sha256 = self.model.checkpoint_sha256 or ""
        self.settings_json = json.dumps(self.settings.as_dict(), sort_keys=True)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["kind"])
        annotations = np.empty(n, dtype=object)
        annotations[:] = [[] for _ in range(n)]
        todo = np.flatnonzero((batch["kind"] == "image") & (batch["status"] == "ok"))
        if len(todo):
            images = [np.ascontiguousarray(batch["pixels"][i]) for i in todo]
            with autocast(self.device, self.precision):
                found = self.generator.generate(images)
            for i, anns in zip(todo, found, strict=True):
                annotations[i] = [{"id": k, **a} for k, a in enumerate(anns)]
        result = {k: v for k, v in batch.items() if k != "pixels"}
        result["annotations"] = annotations
        result["model"] = np.full(n, self.model_name, dtype=object)
        result["checkpoint_sha256"] = np.full(n, self.sha256, dtype=object)
        result["settings"] = np.full(n, self.settings_json, dtype=object)
        return result
