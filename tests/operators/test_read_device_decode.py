"""input.decode device: the read task ships the image's bytes (header read only), the
Embedder decodes them where it runs, and a job that cannot decode on a GPU is refused before
any work. The CPU path never imports torchvision."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from operators.config import ComputeConfig, EmbedOutputConfig, InputConfig, ModelConfig
from operators.embed import embedder as embedder_module
from operators.embed.embedder import Embedder
from operators.shards.decode import decode_image_for
from operators.shards.device_decode import device_decode_problem, header_hw
from operators.shards.prepare import read_and_prepare
from operators.shards.sample import write_sample_corpus
from tests.bad_corpus import jpeg


def _rows(corpus, decode: str) -> list[dict]:
    item = {"shard": "sa_000000", "url": f"{corpus}/sa_000000.tar", "container": "tar"}
    return list(read_and_prepare(item, "sam_tiny", InputConfig(urls=["-"], decode=decode)))


def test_the_cpu_path_never_imports_torchvision(tmp_path):
    write_sample_corpus(str(tmp_path), shards=1, images_per_shard=2, seed=1)
    code = ("import sys; import pipelines.embed, operators.embed.embedder; "
            "from operators.shards.prepare import read_and_prepare; "
            "from operators.config import InputConfig; "
            f"rows = list(read_and_prepare({{'shard': 'sa_000000', 'url': "
            f"'{tmp_path}/sa_000000.tar', 'container': 'tar'}}, 'sam_tiny', "
            "InputConfig(urls=['-']))); assert len(rows) == 3; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_device_rows_carry_the_bytes_and_the_cpu_rows_sizes(tmp_path):
    write_sample_corpus(str(tmp_path), shards=1, images_per_shard=3, seed=2)
    cpu, device = _rows(tmp_path, "cpu"), _rows(tmp_path, "device")
    for c, d in zip(cpu, device, strict=True):
        assert (c["key"], c["status"], c["is_end"]) == (d["key"], d["status"], d["is_end"])
        assert d["pixels"].shape == (1, 1, 3)  # no decoded pixels cross Ray
        if not c["is_end"]:
            assert d["encoded"][:3] == b"\xff\xd8\xff" and not c["encoded"]
            assert d["orig_hw"].tolist() == c["orig_hw"].tolist()
            assert d["input_hw"].tolist() == c["input_hw"].tolist()
    rotated = jpeg(40, 60, exif_rotate=True)  # stored 40x60, displayed 60x40
    assert header_hw(rotated, 10**6) == decode_image_for(rotated, 10**6)[1] == (60, 40)
    with pytest.raises(ValueError, match="over max_image_pixels=100"):
        header_hw(rotated, 100)


def test_the_embedder_embeds_encoded_rows_as_it_embeds_pixels(tmp_path, monkeypatch):
    """The routing on a CPU: a stand-in for the GPU decode (the CPU decode and the model's own
    resize) gives the embeddings of the CPU path; a row it cannot decode becomes an error."""
    write_sample_corpus(str(tmp_path), shards=1, images_per_shard=3, seed=3)
    cpu, device = _rows(tmp_path, "cpu"), _rows(tmp_path, "device")
    device[1]["encoded"] = b"\xff\xd8\xff broken"

    def fake_decode(encoded, input_hws, model, dev):
        out = torch.zeros((len(encoded), 3, model.image_size, model.image_size), dtype=torch.uint8)
        errors = []
        for i, data in enumerate(encoded):
            try:
                padded, _ = model.prepare_image(decode_image_for(data, 10**8)[0])
            except Exception as e:  # noqa: BLE001
                errors.append(f"decode failed: {e}")
                continue
            out[i] = torch.from_numpy(padded).permute(2, 0, 1)
            errors.append(None)
        return out, errors

    monkeypatch.setattr(embedder_module, "decode_on_device", fake_decode)
    actor = Embedder(ModelConfig(name="sam_tiny", precision="fp32", batch_size=1),
                     EmbedOutputConfig(path="-", dtype="float32"), ComputeConfig(), device="cpu")

    def batch(rows):
        return {k: np.stack([r[k] for r in rows]) if isinstance(rows[0][k], np.ndarray)
                else np.array([r[k] for r in rows], dtype=object) for k in rows[0]}

    got, want = actor(batch(device)), actor(batch(cpu))
    assert "encoded" not in got and got["status"].tolist() == ["ok", "error", "ok", "end"]
    assert "decode failed" in got["error"][1]
    for i in (0, 2):  # the same input (its memory layout differs: NCHW vs NHWC seen as NCHW)
        np.testing.assert_allclose(got["embedding"][i], want["embedding"][i], atol=1e-5)


def test_device_decode_is_refused_where_it_cannot_run(ray_local, tmp_path):
    from pipelines.config import parse_config
    from pipelines.embed import run_embed
    from pipelines.preflight import PreflightError

    problem = device_decode_problem()
    if torch.cuda.is_available() and problem is None:
        pytest.skip("this machine can decode on its GPU")
    assert problem and ("torchvision" in problem or "CUDA" in problem)
    write_sample_corpus(str(tmp_path / "in"), shards=1, images_per_shard=2, seed=4)

    def cfg(**output):
        return parse_config({"input": {"urls": [str(tmp_path / "in")], "decode": "device"},
                             "output": {"path": str(tmp_path / "out"), **output},
                             "model": {"name": "sam_tiny"}})

    with pytest.raises(PreflightError, match="input.decode: expected 'cpu' with output.include"):
        run_embed(cfg(include_image=True))
    with pytest.raises(PreflightError, match="input.decode: expected GPUs for the model actors"):
        run_embed(cfg())  # the test Ray has no GPU
    # refused before the output was claimed: a rerun with decode cpu finds it free
    assert not list(tmp_path.glob("out*/**/*.json")) and not list(tmp_path.glob("out/*/*"))
