"""The embedding actor: rows in any order of ok, error and end rows come back with each ok
row's own embedding (model batches queued and collected in order), zeros elsewhere, and a
float16 output that is the float32 embedding rounded once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.runtime.batch_size import probe_batch_size
from operators.runtime.device import pick_device
from tests.support import embedder


def _batch(size: int, kinds: list[str], statuses: list[str], seed: int = 0) -> dict:
    n = len(kinds)
    rng = np.random.default_rng(seed)
    hw = rng.integers(size // 2, size + 1, (n, 2)).astype(np.int32)
    return {"is_end": np.array([k == "end" for k in kinds]),
            "status": np.array(statuses, dtype=object),
            "pixels": rng.integers(0, 256, (n, size, size, 3), np.uint8), "input_hw": hw,
            "key": np.array([f"k{i}" for i in range(n)], dtype=object)}


@pytest.mark.parametrize(("batch_size", "pad"), [(1, False), (3, False), (16, False), (4, True)])
def test_rows_get_their_own_embedding(batch_size, pad):
    kinds = ["image", "image", "image", "end", "image", "image", "image", "image"]
    statuses = ["ok", "error", "ok", "end", "ok", "ok", "ok", "ok"]
    emb = embedder(batch_size=batch_size, precision="fp32", dtype="float32")
    emb.compile = pad  # as with model.compile: the short last batch is padded
    batch = _batch(emb.model.image_size, kinds, statuses)
    out = emb(batch)
    assert "pixels" not in out and list(out["key"]) == list(batch["key"])
    with torch.inference_mode():
        for i, (kind, status) in enumerate(zip(kinds, statuses, strict=True)):
            got = out["embedding"][i]
            if kind != "image" or status != "ok":
                assert not got.any(), f"row {i} ({kind}/{status}) should be zeros"
                continue
            x = torch.from_numpy(batch["pixels"][i : i + 1]).permute(0, 3, 1, 2)
            want = emb.model.embed_images(x.to(emb.device),
                                          [tuple(batch["input_hw"][i])])[0].cpu().numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"row {i}")


def test_float16_output_is_the_float32_embedding_rounded():
    kinds, statuses = ["image"] * 5, ["ok"] * 5
    ref = embedder(batch_size=2, precision="fp32", dtype="float32")
    half = embedder(batch_size=2, precision="fp32", dtype="float16")
    batch = _batch(ref.model.image_size, kinds, statuses, seed=1)
    got = half(batch)["embedding"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, ref(batch)["embedding"].astype(np.float16))


def test_unknown_output_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        embedder(dtype="int8")


def test_a_worker_given_a_gpu_refuses_to_run_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="expected CUDA on this worker"):
        embedder(device="cuda")
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="expected device auto, cuda or cpu, got tpu"):
        pick_device("tpu")


def test_gpu_share_is_checked():
    emb = embedder(device="cpu")
    with pytest.raises(ValueError, match=r"expected a GPU share in \(0, 1\], got 0"):
        probe_batch_size(emb.model, emb.device, "fp32", 64, gpu_share=0)
