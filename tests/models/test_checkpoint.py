"""Loading official-format checkpoint files: local and s3://, sha256, strict keys, errors."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from models import CheckpointError, build_model
from models.checkpoint import seeded_state_dict


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """A checkpoint written the way the official files are: torch.save of a plain state dict."""
    model = build_model("sam_tiny")
    sd = seeded_state_dict(model, seed=7)
    path = tmp_path_factory.mktemp("ckpt") / "sam_tiny.pth"
    torch.save(sd, path)
    return path, sd, hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_weights(model, sd):
    ours = model.state_dict()
    assert set(ours) == set(sd)
    for k, v in sd.items():
        assert torch.equal(ours[k], v), k


def test_loads_local_file_strictly_and_records_digest(official_file):
    path, sd, digest = official_file
    model = build_model("sam_tiny", checkpoint=path, sha256=digest)
    _assert_weights(model, sd)
    assert not model.training
    assert model.checkpoint_sha256 == digest
    assert model.model_name == "sam_tiny"


def test_loads_from_s3(official_file, s3_bucket, s3_endpoint):
    path, sd, digest = official_file
    fs, bucket = s3_bucket
    fs.put(str(path), f"{bucket}/weights/sam_tiny.pth")
    os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint  # the standard AWS variable
    try:
        model = build_model("sam_tiny", checkpoint=f"s3://{bucket}/weights/sam_tiny.pth",
                            sha256=digest.upper())
    finally:
        os.environ.pop("AWS_ENDPOINT_URL_S3")
    _assert_weights(model, sd)
    assert model.checkpoint_sha256 == digest


def test_loads_from_s3_with_the_jobs_storage_options(official_file, s3_bucket, s3_endpoint,
                                                     monkeypatch):
    """A job names its endpoint in storage.endpoint_url only: the checkpoint (whole model or
    just the heads) is read with those options, not with an AWS_ENDPOINT_URL_S3 variable."""
    from models.export import head_state_dict, load_heads

    path, sd, digest = official_file
    fs, bucket = s3_bucket
    fs.put(str(path), f"{bucket}/weights/sam_tiny.pth")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    url = f"s3://{bucket}/weights/sam_tiny.pth"
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    model = build_model("sam_tiny", checkpoint=url, sha256=digest, storage_options=options)
    _assert_weights(model, sd)
    heads, heads_digest = load_heads("sam_tiny", url, digest, storage_options=options)
    assert heads_digest == digest
    assert heads.keys() == head_state_dict(model).keys()
    for k, v in heads.items():
        assert torch.equal(v, sd[k]), k


def test_wrong_sha256_names_both_digests(official_file):
    path, _, digest = official_file
    with pytest.raises(CheckpointError) as e:
        build_model("sam_tiny", checkpoint=path, sha256="0" * 64)
    assert "0" * 64 in str(e.value) and digest in str(e.value)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as e:
        build_model("sam_vit_q")
    msg = str(e.value)
    assert "sam_vit_q" in msg
    for name in ("sam_vit_b", "sam_vit_h", "sam_vit_l", "sam_tiny"):
        assert name in msg


def test_missing_and_unexpected_keys_are_listed(official_file, tmp_path):
    _, sd, _ = official_file
    bad = dict(sd)
    bad.pop("mask_decoder.iou_token.weight")
    bad["image_encoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as e:
        build_model("sam_tiny", checkpoint=path)
    msg = str(e.value)
    assert "missing keys (1): mask_decoder.iou_token.weight" in msg
    assert "unexpected keys (1): image_encoder.extra.weight" in msg


def test_shape_mismatch_is_named(official_file, tmp_path):
    _, sd, _ = official_file
    bad = dict(sd)
    bad["image_encoder.pos_embed"] = torch.zeros(1, 4, 4, 32)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"image_encoder.pos_embed: expected \(1, 8, 8, 32\), "
                       r"got \(1, 4, 4, 32\)"):
        build_model("sam_tiny", checkpoint=path)


def test_a_checkpoint_for_another_size_is_refused(tmp_path):
    sd = seeded_state_dict(build_model("sam_tiny"), seed=0)
    path = tmp_path / "tiny.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        build_model("sam_vit_b", checkpoint=path)


def test_pickled_code_is_never_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"state": Boom()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        build_model("sam_tiny", checkpoint=path)
    assert not (tmp_path / "pwned").exists()


def test_missing_file_and_non_dict(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_model("sam_tiny", checkpoint=tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        build_model("sam_tiny", checkpoint=path)


def test_seeded_weights_are_deterministic_and_seed_dependent():
    a = build_model("sam_tiny", seed=3).state_dict()
    b = build_model("sam_tiny", seed=3).state_dict()
    c = build_model("sam_tiny", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image_encoder.blocks.0.attn.rel_pos_h"],
                           c["image_encoder.blocks.0.attn.rel_pos_h"])
