"""The embedding actor: a Ray Data callable class holding one model on its device.

Ray batch size and model batch size are separate: a Ray batch of rows is split into model
batches of `model.batch_size` images for the encoder. Rows that are not ok images (decode
errors, shard-end rows) pass through with a zero embedding that the writer turns into null.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from models import HighResPromptableModel, image_embedding

from ..config import ComputeConfig, EmbedOutputConfig, ModelConfig
from ..runtime.batch_size import load_sized_model
from ..runtime.device import autocast
from ..shards.device_decode import decode_on_device
from ..shards.schema import HIGH_RES_COLUMNS, usable_images

_TORCH_DTYPE = {"float16": torch.float16, "float32": torch.float32}


class Embedder:
    """batch (prepared rows: "pixels" BxSxSx3, "input_hw" int32 Bx2, "status", "is_end", ...)
    -> the same batch without pixels, plus "embedding" (BxCxHxW `output.dtype`), "model",
    "checkpoint_sha256"; with output.high_res (a HighResPromptableModel) also "high_res_0"
    and "high_res_1" (Bx32x256x256 and Bx64x128x128 `output.dtype` at full size). The
    embedding is `models.image_embedding`: a promptable model's image embedding (256x64x64
    for SAM), a SAM 3 model's vision trunk map (1024x72x72).

    model: the job's `model` section (model.batch_size images per encoder call, or "auto": the
    largest that fits the device's `gpu_share`, at most compute.ray_batch_size: the rows an
    actor call brings). With model.compile a short batch is padded to
    min(model.batch_size, compute.ray_batch_size), so the compiled encoder sees one shape.
    output: the `output` section (output.dtype). device, gpu_share, num_threads: what Ray gave
    the actor (see runtime.device)."""

    def __init__(
        self,
        model: ModelConfig,
        output: EmbedOutputConfig,
        compute: ComputeConfig | None = None,
        storage_options: dict | None = None,
        num_threads: int | None = None,
        device: str = "auto",
        gpu_share: float = 1.0,
    ) -> None:
        compute = compute or ComputeConfig()
        # no text is encoded here: a concept model (SAM 3) needs no vocabulary
        self.model, self.device, self.precision, self.batch_size = load_sized_model(
            model, compute, storage_options, num_threads, device, gpu_share, vocabulary=False)
        self.compile = model.compile
        self.pad_to = min(self.batch_size, compute.ray_batch_size)  # no call brings more rows
        self.out_dtype = np.dtype(output.dtype)
        self.model_name = model.name
        self.sha256 = self.model.checkpoint_sha256 or ""
        self.high_res = output.high_res
        if self.high_res and not isinstance(self.model, HighResPromptableModel):
            raise ValueError(f"output.high_res: expected a model whose decoder takes high-res "
                             f"features (SAM 2), got '{model.name}'")

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["is_end"])
        shapes = [tuple(self.model.embedding_shape)]
        if self.high_res:
            shapes += [tuple(s) for s in self.model.high_res_shapes]
        outs = [np.zeros((n, *s), dtype=self.out_dtype) for s in shapes]
        todo = usable_images(batch)
        status = batch["status"].copy()
        error = batch["error"].copy() if "error" in batch else np.full(n, "", dtype=object)
        # input.decode device: rows carry their image's bytes, decoded here on the device
        encoded = "encoded" in batch and any(len(batch["encoded"][i]) for i in todo)
        # Each model batch's embeddings are copied back while the next batch runs: at most one
        # batch is in flight on the device while the host gathers and uploads the next.
        pending: list[tuple[np.ndarray, torch.Tensor, Any]] = []
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start : start + self.batch_size]
            pixels = batch["pixels"][idx]
            if encoded:
                pixels, failed = decode_on_device([batch["encoded"][i] for i in idx],
                                                  batch["input_hw"][idx], self.model, self.device)
                for i, why in zip(idx, failed, strict=True):
                    if why:
                        status[i], error[i] = "error", why
            pending.append((idx, *self._embed_async(pixels, batch["input_hw"][idx])))
            if len(pending) > 1:
                self._collect(pending.pop(0), outs)
        for item in pending:
            self._collect(item, outs)
        result = {k: v for k, v in batch.items() if k not in ("pixels", "encoded")}
        result["status"], result["error"] = status, error
        result["embedding"] = outs[0]
        for name, maps in zip(HIGH_RES_COLUMNS, outs[1:], strict=False):
            result[name] = maps
        result["model"] = np.full(n, self.model_name, dtype=object)
        result["checkpoint_sha256"] = np.full(n, self.sha256, dtype=object)
        return result

    def _encode(self, x: torch.Tensor, hws: torch.Tensor, n: int) -> list[torch.Tensor]:
        """Bx3xSxS on the device -> [embedding BxCxHxW, then with output.high_res the
        high-res maps] of the first n rows, cast to `out_dtype` on the device (a float16 copy
        back is half the bytes of a float32 one)."""
        dtype = _TORCH_DTYPE[self.out_dtype.name]
        with autocast(self.device, self.precision):
            if self.high_res:
                feats = self.model.embed_images_with_features(x, hws)
                maps = [feats["image_embed"], *feats["high_res_feats"]]
            else:
                maps = [image_embedding(self.model, x, hws)]
        return [m[:n].to(dtype) for m in maps]

    def _to_host(self, maps: list[torch.Tensor]) -> tuple[list[torch.Tensor], Any]:
        """Device tensors -> (host tensors, CUDA event or None): on CUDA the copies are only
        queued into page-locked memory, complete once the event has fired."""
        if self.device.type != "cuda":
            return maps, None
        hosts = []
        for m in maps:
            host = torch.empty(m.shape, dtype=m.dtype, pin_memory=True)
            host.copy_(m, non_blocking=True)
            hosts.append(host)
        event = torch.cuda.Event()
        event.record()
        return hosts, event

    def _embed_async(self, pixels: np.ndarray | torch.Tensor, input_hw: np.ndarray
                     ) -> tuple[list[torch.Tensor], Any]:
        """uint8 (or the model's float) BxSxSx3 host array, or uint8 Bx3xSxS already on the
        device (decoded there), + int32 Bx2 -> ([BxCxHxW `out_dtype` host tensor, high-res
        maps with output.high_res], CUDA event or None). On CUDA the work is only queued: the
        host tensors are page-locked and complete once the event has fired; on a CPU they
        are complete."""
        cuda = self.device.type == "cuda"
        n = len(pixels)
        if isinstance(pixels, torch.Tensor):  # decoded on the device
            return self._embed_on_device(pixels, input_hw)
        if self.compile and n < self.pad_to:  # one shape for the compiled encoder
            pad = self.pad_to - n
            pixels = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]), pixels.dtype)])
            input_hw = np.concatenate([input_hw, np.full((pad, 2), pixels.shape[1],
                                                         input_hw.dtype)])
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        hws = torch.from_numpy(input_hw.astype(np.int64))
        if cuda:  # page-locked: the copies are queued behind the batch before, the host goes on
            x, hws = x.pin_memory(), hws.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        hws = hws.to(self.device, non_blocking=True)
        return self._to_host(self._encode(x, hws, n))

    def _embed_on_device(self, x: torch.Tensor, input_hw: np.ndarray
                         ) -> tuple[list[torch.Tensor], Any]:
        """_embed_async for uint8 Bx3xSxS images already on the device."""
        n = len(x)
        if self.compile and n < self.pad_to:  # one shape for the compiled encoder
            x = torch.cat([x, x.new_zeros((self.pad_to - n, *x.shape[1:]))])
            input_hw = np.concatenate([input_hw, np.full((self.pad_to - n, 2), x.shape[-1],
                                                         input_hw.dtype)])
        hws = torch.from_numpy(input_hw.astype(np.int64)).to(self.device)
        return self._to_host(self._encode(x, hws, n))

    @staticmethod
    def _collect(item: tuple[np.ndarray, list[torch.Tensor], Any], outs: list[np.ndarray]
                 ) -> None:
        """Wait for one queued batch and put its maps into their rows of `outs` (the
        embedding, then any high-res maps)."""
        idx, hosts, event = item
        if event is not None:
            event.synchronize()
        for out, host in zip(outs, hosts, strict=True):
            out[idx] = host.numpy()
