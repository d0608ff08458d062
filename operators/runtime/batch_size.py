"""`model.batch_size: auto`: the encoder batch that fits the device, chosen per model.

On CUDA the encoder is probed once per actor: the peak memory of a batch of 1 and of 2 gives
the fixed part (weights, workspace) and the per-image part (activations), and the batch is the
largest power of two whose peak stays within `HEADROOM` of the memory free on the device,
capped by the rows an actor call brings (compute.ray_batch_size). On a CPU larger batches buy
nothing (the threads are busy with one image), so auto is `CPU_BATCH`; one-pass models, which
have no separate encoder to probe, take `CPU_BATCH` too.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from models import PromptableModel, model_kind

from ..config import CPU_BATCH, ComputeConfig, ModelConfig
from .device import autocast, load_model

log = logging.getLogger(__name__)

HEADROOM = 0.8  # share of the free device memory a batch may take (fragmentation, decoder)
# Pixels of full-size masks made at once (64 masks of 1024x1024: 256 MiB of float32 logits).
MASK_PIXEL_BUDGET = 64 * 1024 * 1024


def upscale_chunk(upscale_batch_size: int, hw: tuple[int, int]) -> int:
    """Masks of size hw made at full size at once: at most `upscale_batch_size`, fewer on
    large images so that a chunk holds at most MASK_PIXEL_BUDGET pixels (a 9000x9000 image:
    one mask at a time), never fewer than one. Memory stays bounded whatever the image size."""
    return max(1, min(upscale_batch_size, MASK_PIXEL_BUDGET // max(1, hw[0] * hw[1])))


def fit_batch_size(free_bytes: int, fixed_bytes: int, per_item_bytes: int, limit: int) -> int:
    """Largest power of two b <= limit with fixed + b * per_item <= HEADROOM * free (>= 1).

    free_bytes: memory free on the device before the probe's tensors; fixed_bytes: peak of a
    batch of 0 (extrapolated); per_item_bytes: peak growth per item."""
    if limit < 1:
        raise ValueError(f"expected a batch limit >= 1, got {limit}")
    budget = HEADROOM * free_bytes - max(fixed_bytes, 0)
    per_item = max(per_item_bytes, 1)
    fits = int(budget // per_item) if budget > 0 else 0
    best = 1
    while best * 2 <= min(fits, limit):
        best *= 2
    return best


def _peak_bytes(model: torch.nn.Module, device: torch.device, precision: str, n: int) -> int:
    """Peak CUDA bytes allocated while encoding n prepared images (zeros of the input dtype)."""
    from ..shards.prepare import input_dtype

    size = model.image_size
    dtype = torch.from_numpy(np.zeros(0, input_dtype(model))).dtype
    # NHWC memory seen as NCHW, as the actors feed it (a compiled encoder then sees its shape)
    pixels = torch.zeros((n, size, size, 3), dtype=dtype, device=device).permute(0, 3, 1, 2)
    hws = torch.tensor([[size, size]] * n, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), autocast(device, precision):
        model.embed_images(pixels, hws)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def choose_batch_size(batch_size: int | str, model: torch.nn.Module, device: torch.device,
                      precision: str, ray_batch_size: int, gpu_share: float = 1.0) -> int:
    """model.batch_size resolved for `model` on `device`: an int stays as it is; "auto" probes
    the encoder of a promptable registry model (built by build_model; see `probe_batch_size`),
    else CPU_BATCH; both capped by compute.ray_batch_size."""
    if batch_size != "auto":
        return int(batch_size)
    if model_kind(model.model_name) is PromptableModel:
        return probe_batch_size(model, device, precision, ray_batch_size, gpu_share)
    return min(CPU_BATCH, ray_batch_size)


def probe_batch_size(model: torch.nn.Module, device: torch.device, precision: str,
                     limit: int, gpu_share: float = 1.0) -> int:
    """The encoder batch for `model` on `device` (see the module docstring). gpu_share: this
    actor's share of the GPU (Ray's fractional `num_gpus`): actors sharing a GPU probe at the
    same time, so each sizes its batch to its share of the free memory."""
    if not 0 < gpu_share <= 1:
        raise ValueError(f"expected a GPU share in (0, 1], got {gpu_share}")
    if device.type != "cuda":
        return min(CPU_BATCH, limit)
    for n in (1, 2):  # warm-up: cuBLAS workspaces, cuDNN's autotuning of both shapes
        _peak_bytes(model, device, precision, n)
    one = _peak_bytes(model, device, precision, 1)
    two = _peak_bytes(model, device, precision, 2)
    free, _ = torch.cuda.mem_get_info(device)
    # the probes' blocks stay in torch's cache: reserved but reusable, so count them as free
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    free = int(free * gpu_share)
    per_image = max(two - one, 1)
    batch = fit_batch_size(free, one - per_image, per_image, limit)
    log.info("model.batch_size auto: %d (%.0f MiB per image, %.0f MiB free)", batch,
             per_image / 2**20, free / 2**20)
    return batch


def load_sized_model(model: ModelConfig, compute: ComputeConfig,
                     storage_options: dict | None = None, num_threads: int | None = None,
                     device: str = "auto", gpu_share: float = 1.0, vocabulary: bool = True
                     ) -> tuple[torch.nn.Module, torch.device, str, int]:
    """What every model actor does first: load the `model` section (device.load_model; a
    concept model's vocabulary unless `vocabulary` is False) and choose its batch
    (choose_batch_size, capped by compute.ray_batch_size, sized to the actor's `gpu_share`).
    Returns (module, device, precision, batch size)."""
    net, dev, precision = load_model(model, storage_options, num_threads, device, vocabulary)
    batch = choose_batch_size(model.batch_size, net, dev, precision, compute.ray_batch_size,
                              gpu_share)
    return net, dev, precision, batch
