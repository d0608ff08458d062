"""The embedding actor: a Ray Data callable class holding one model on its device.

Ray batch size and model batch size are separate: a Ray batch of rows is split into model
batches of `model_batch_size` images for the encoder. Rows that are not ok images (decode
errors, shard-end rows) pass through with a zero embedding that the writer turns into null.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from models import build_model

from .batch_size import choose_encoder_batch_size

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
_TORCH_DTYPE = {"float16": torch.float16, "float32": torch.float32}


def pick_device(device: str = "auto") -> torch.device:
    """"cuda" (the worker was given a GPU: refuse to fall back to the CPU silently), "cpu", or
    "auto" (CUDA when torch sees one)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"expected CUDA on this worker (it was given a GPU), got torch {torch.__version__} "
            f"with torch.cuda.is_available() False (a CPU build of torch, or a driver mismatch)")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"expected device auto, cuda or cpu, got {device}")
    return torch.device(device)


def load_model(model_name: str, checkpoint: str | None, sha256: str | None, seed: int | None,
               precision: str, storage_options: dict | None, num_threads: int | None,
               compile_encoder: bool = False, channels_last: bool = False, device: str = "auto"
               ) -> tuple[torch.nn.Module, torch.device, str]:
    """Build a registry model on `device` (see pick_device; the pipelines say "cuda" for an
    actor Ray gave a GPU, else "cpu"). Returns (model, device, resolved precision: auto ->
    bf16 on CUDA, else fp32).

    channels_last: the image encoder's weights in NHWC (faster convolutions on GPUs for the
    conv encoders: MobileSAM, EfficientViT-SAM). compile_encoder: `torch.compile` the image
    encoder (inductor; compiled kernels are cached by torch between runs on a machine). For a
    one-pass model (FastSAM) both apply to its whole network."""
    if num_threads:
        torch.set_num_threads(num_threads)
    device = pick_device(device)
    if device.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest convolutions
        torch.backends.cudnn.benchmark = True
    if storage_options and checkpoint and "://" in checkpoint:
        # fsspec reads the endpoint from the environment for s3:// checkpoints
        endpoint = storage_options.get("client_kwargs", {}).get("endpoint_url")
        if endpoint:
            os.environ.setdefault("AWS_ENDPOINT_URL_S3", endpoint)
    model = build_model(model_name, checkpoint=checkpoint, sha256=sha256,
                        seed=None if checkpoint else seed).to(device)
    # One-pass models (FastSAM) have no separate encoder: the flags apply to the whole network.
    if channels_last:
        getattr(model, "image_encoder", model).to(memory_format=torch.channels_last)
    if compile_encoder and hasattr(model, "image_encoder"):
        model.image_encoder = torch.compile(model.image_encoder, dynamic=False)
    elif compile_encoder:
        model.forward = torch.compile(model.forward)  # shapes vary with the aspect ratio
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return model, device, precision


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST[precision])


class Embedder:
    """batch {"pixels": uint8 BxSxSx3, "input_hw": int32 Bx2, "status", "kind", ...} ->
    the same batch plus "embedding" (BxCxHxW `out_dtype`), "model", "checkpoint_sha256".

    model_batch_size: images per encoder call, or "auto" (the largest that fits the device's
    `gpu_share`, at most `batch_limit`: the rows an actor call brings). With compile_encoder a
    short batch is padded to min(model_batch_size, batch_limit), so the compiled encoder sees
    one shape."""

    def __init__(
        self,
        model_name: str,
        checkpoint: str | None = None,
        sha256: str | None = None,
        seed: int | None = None,
        precision: str = "auto",
        model_batch_size: int | str = 8,
        out_dtype: str = "float16",
        storage_options: dict | None = None,
        num_threads: int | None = None,
        compile_encoder: bool = False,
        channels_last: bool = False,
        batch_limit: int = 64,
        device: str = "auto",
        gpu_share: float = 1.0,
    ) -> None:
        if out_dtype not in _TORCH_DTYPE:
            raise ValueError(f"expected out_dtype {' or '.join(_TORCH_DTYPE)}, got {out_dtype}")
        self.model, self.device, self.precision = load_model(
            model_name, checkpoint, sha256, seed, precision, storage_options, num_threads,
            compile_encoder, channels_last, device)
        if model_batch_size == "auto":  # fit the device (operators/batch_size.py)
            model_batch_size = choose_encoder_batch_size(self.model, self.device,
                                                         self.precision, batch_limit, gpu_share)
        self.model_batch_size = int(model_batch_size)
        self.pad_batches = compile_encoder
        self.pad_to = min(self.model_batch_size, batch_limit)  # no call brings more rows
        self.out_dtype = np.dtype(out_dtype)
        self.model_name = model_name
        self.sha256 = self.model.checkpoint_sha256 or ""

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["kind"])
        c, h, w = self.model.embedding_shape
        out = np.zeros((n, c, h, w), dtype=self.out_dtype)
        todo = np.flatnonzero((batch["kind"] == "image") & (batch["status"] == "ok"))
        # Each model batch's embeddings are copied back while the next batch runs: at most one
        # batch is in flight on the device while the host gathers and uploads the next.
        pending: list[tuple[np.ndarray, torch.Tensor, Any]] = []
        for start in range(0, len(todo), self.model_batch_size):
            idx = todo[start : start + self.model_batch_size]
            pending.append((idx, *self._embed_async(batch["pixels"][idx],
                                                    batch["input_hw"][idx])))
            if len(pending) > 1:
                self._collect(pending.pop(0), out)
        for item in pending:
            self._collect(item, out)
        result = {k: v for k, v in batch.items() if k != "pixels"}
        result["embedding"] = out
        result["model"] = np.full(n, self.model_name, dtype=object)
        result["checkpoint_sha256"] = np.full(n, self.sha256, dtype=object)
        return result

    def _embed_async(self, pixels: np.ndarray, input_hw: np.ndarray
                     ) -> tuple[torch.Tensor, Any]:
        """uint8 (or the model's float) BxSxSx3 + int32 Bx2 -> (BxCxHxW `out_dtype` host
        tensor, CUDA event or None). On CUDA the work is only queued: the host tensor is
        page-locked and complete once the event has fired; on a CPU it is complete."""
        cuda = self.device.type == "cuda"
        n = len(pixels)
        if self.pad_batches and n < self.pad_to:  # one shape for the compiled encoder
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
        with autocast(self.device, self.precision):
            emb = self.model.embed_images(x, hws)
        # Cast on the device: a float16 copy back is half the bytes of a float32 one
        emb = emb[:n].to(_TORCH_DTYPE[self.out_dtype.name])
        if not cuda:
            return emb, None
        host = torch.empty(emb.shape, dtype=emb.dtype, pin_memory=True)
        host.copy_(emb, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    @staticmethod
    def _collect(item: tuple[np.ndarray, torch.Tensor, Any], out: np.ndarray) -> None:
        """Wait for one queued batch and put its embeddings into their rows of `out`."""
        idx, host, event = item
        if event is not None:
            event.synchronize()
        out[idx] = host.numpy()
