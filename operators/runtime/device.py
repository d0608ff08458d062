"""Device choice, model loading and autocast for the model actors (embed, everything mode,
prompted masks, evaluation) and the benchmarks."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from models import ConceptModel, build_model
from models.predictor import AUTOCAST_DTYPES

from ..config import ModelConfig


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """model.precision "auto" -> bf16 on CUDA, else fp32; other values unchanged."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def load_model(model: ModelConfig, storage_options: dict | None = None,
               num_threads: int | None = None, device: str = "auto", vocabulary: bool = True
               ) -> tuple[torch.nn.Module, torch.device, str]:
    """Build the registry model of the `model` section on `device` (see pick_device; the
    pipelines say "cuda" for an actor Ray gave a GPU, else "cpu"). Returns (module, device,
    resolved precision). vocabulary: a concept model's tokenizer reads its vocabulary file
    (False for jobs that encode no text: embed).

    model.channels_last: the image encoder's weights in NHWC (faster convolutions on GPUs for
    the conv encoders: MobileSAM, EfficientViT-SAM). model.compile: `torch.compile` the image
    encoder (inductor; compiled kernels are cached by torch between runs on a machine). For a
    one-pass model (FastSAM) both apply to its whole network."""
    if num_threads:
        torch.set_num_threads(num_threads)
    dev = pick_device(device)
    if dev.type == "cuda":  # fixed input shapes: let cuDNN pick its fastest convolutions
        torch.backends.cudnn.benchmark = True
    net = build_model(model.name, checkpoint=model.checkpoint, sha256=model.sha256,
                      seed=None if model.checkpoint else model.seed,
                      storage_options=storage_options).to(dev)
    if vocabulary and isinstance(net, ConceptModel):  # SAM 3: its tokenizer reads the file
        net.use_vocabulary(local_copy(vocabulary_of(model), storage_options))
    encoder = getattr(net, "image_encoder", None)  # one-pass models: the whole network
    if model.channels_last:
        (encoder or net).to(memory_format=torch.channels_last)
    if model.compile and encoder is not None:
        net.image_encoder = torch.compile(encoder, dynamic=False)
    elif model.compile:
        net.forward = torch.compile(net.forward)  # shapes vary with the aspect ratio
    return net, dev, resolve_precision(model.precision, dev)


def vocabulary_of(model: ModelConfig) -> str:
    """A concept model's vocabulary file (model.vocabulary, else the official file name beside
    the checkpoint); ValueError naming model.vocabulary when neither is known."""
    path = model.vocabulary_path()
    if path is None:
        raise ValueError(f"model.vocabulary: expected the tokenizer's vocabulary file of "
                         f"{model.name} ({ModelConfig.VOCABULARY_FILE}, given beside the "
                         f"checkpoint or named here), got none")
    return path


def local_copy(url: str, storage_options: dict | None = None) -> str:
    """A local path holding the file at `url`: the path itself, or for an fsspec URL a copy
    in a temporary folder (small files: a vocabulary, a concepts list)."""
    if "://" not in url or url.startswith("file://"):
        return url.removeprefix("file://")
    import tempfile

    import fsspec

    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        data = f.read()
    folder = tempfile.mkdtemp(prefix="samdata-")
    path = os.path.join(folder, url.rsplit("/", 1)[-1] or "file")
    with open(path, "wb") as out:
        out.write(data)
    return path


def autocast(device: torch.device, precision: str):
    """Autocast context for `precision` (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
