"""`model.batch_size: auto`: the fit rule, the CPU choice, the config field, and (on a GPU
only) the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.config import CPU_BATCH, ComputeConfig, GeneratorConfig, ModelConfig
from operators.everything.labeler import AutoLabeler
from operators.runtime.batch_size import fit_batch_size, probe_batch_size
from pipelines.config import ConfigError, EmbedConfig, parse_config
from tests.support import embedder

GIB = 2**30


@pytest.mark.parametrize(("free", "fixed", "per_item", "limit", "want"), [
    (80 * GIB, 2.5 * GIB, 3 * GIB, 64, 16),  # 0.8*80 - 2.5 = 61.5 GiB -> 20 fit -> 16
    (80 * GIB, 2.5 * GIB, 3 * GIB, 8, 8),  # capped by the rows an actor call brings
    (80 * GIB, 1 * GIB, 0.5 * GIB, 64, 64),  # 126 fit -> the limit
    (10 * GIB, 2 * GIB, 3 * GIB, 64, 2),  # 6 GiB budget -> 2
    (4 * GIB, 4 * GIB, 1 * GIB, 64, 1),  # nothing fits: still 1 (the device will say OOM)
    (80 * GIB, 0, 3 * GIB, 24, 16),  # powers of two only
])
def test_fit_batch_size(free, fixed, per_item, limit, want):
    assert fit_batch_size(int(free), int(fixed), int(per_item), limit) == want


def test_fit_batch_size_refuses_a_zero_limit():
    with pytest.raises(ValueError, match="expected a batch limit >= 1, got 0"):
        fit_batch_size(GIB, 0, 1, 0)


def test_auto_on_a_cpu_is_the_cpu_batch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU worker, also on GPUs
    emb = embedder(batch_size="auto", ray_batch_size=64)
    assert emb.batch_size == CPU_BATCH
    assert embedder(batch_size="auto", ray_batch_size=2).batch_size == 2
    # and it embeds like a fixed batch size
    size = emb.model.image_size
    batch = {"is_end": np.zeros(5, bool),
             "status": np.array(["ok"] * 5, dtype=object),
             "pixels": np.random.default_rng(0).integers(0, 256, (5, size, size, 3), np.uint8),
             "input_hw": np.full((5, 2), size, np.int32)}
    fixed = embedder(batch_size=5, dtype="float32")
    auto = embedder(batch_size="auto", dtype="float32")
    assert np.allclose(auto(batch)["embedding"], fixed(batch)["embedding"], atol=1e-5)


@pytest.mark.parametrize("name", ["sam_tiny", "fastsam_s"])
def test_autolabel_caps_auto_by_ray_batch_size_as_embed(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for ray_batch_size, want in ((64, CPU_BATCH), (2, 2)):
        labeler = AutoLabeler(ModelConfig(name=name, batch_size="auto"), GeneratorConfig(),
                              ComputeConfig(ray_batch_size=ray_batch_size))
        assert labeler.batch_size == labeler.generator.batch_size == want
        assert embedder(batch_size="auto", ray_batch_size=ray_batch_size).batch_size == want


def test_config_batch_size_auto_or_positive():
    base = {"input": {"urls": ["x"]}, "output": {"path": "y"}}
    assert parse_config({**base, "model": {"batch_size": "auto"}}, EmbedConfig
                        ).model.batch_size == "auto"
    for bad in (0, "big"):
        with pytest.raises(ConfigError, match="model.batch_size"):
            parse_config({**base, "model": {"batch_size": bad}}, EmbedConfig)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the probe measures CUDA memory")
def test_cuda_probe_fits_the_free_memory():
    from models import build_model

    device = torch.device("cuda")
    model = build_model("sam_vit_b", seed=0).to(device)
    batch = probe_batch_size(model, device, "bf16", 64)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    assert 1 <= batch <= 64
    # the chosen batch really runs, within the free memory
    torch.cuda.reset_peak_memory_stats(device)
    size = model.image_size
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model.embed_images(torch.zeros((batch, 3, size, size), dtype=torch.uint8,
                                       device=device), [(size, size)] * batch)
    assert torch.cuda.max_memory_allocated(device) < free
