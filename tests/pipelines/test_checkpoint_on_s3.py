"""A checkpoint on the job's S3 endpoint (storage.endpoint_url only, no AWS_ENDPOINT_URL_S3):
the preflight check and the actors' model load both read it with the job's storage options,
and neither changes the process environment."""

from __future__ import annotations

import hashlib
import os

import torch

from models import build_model
from models.checkpoint import seeded_state_dict
from operators.config import ModelConfig, StorageConfig
from operators.runtime.device import load_model
from pipelines.preflight import check_checkpoint


def _aws_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def test_preflight_and_load_read_the_checkpoint_with_the_jobs_endpoint(
        s3_bucket, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    sd = seeded_state_dict(build_model("sam_tiny"), seed=3)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sd, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fs, bucket = s3_bucket
    fs.put(str(path), f"{bucket}/weights/sam_tiny.pth")
    url = f"s3://{bucket}/weights/sam_tiny.pth"
    storage = StorageConfig(endpoint_url=s3_endpoint)
    env = _aws_env()

    assert check_checkpoint("sam_tiny", url, digest, storage=storage) == digest
    net, device, _ = load_model(ModelConfig(name="sam_tiny", checkpoint=url, sha256=digest),
                                storage.options(), device="cpu", vocabulary=False)

    assert _aws_env() == env  # (torch itself may set TORCHINDUCTOR_CACHE_DIR)
    assert device.type == "cpu"
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v), k
