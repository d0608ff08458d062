"""SAM 3 against the official checkpoint layout: our model's state dict is exactly the
`detector.*` part of `sam3.pt` (tests/data/sam3.manifest.json, from the official modules by
tests/golden/make_sam3_manifest.py), the `tracker.*` part is declared unused, and files in the
official layout (`{"model": sd}` or plain, detector + tracker keys) load through `build_model`
strictly, while any other missing or unexpected key is named."""

from __future__ import annotations

import pytest
import torch

from models import MODEL_REGISTRY, CheckpointError, ConceptModel, build_model, model_kind
from models.sam3 import TRACKER_PREFIXES, Sam3
from pipelines.preflight import PreflightError, check_checkpoint
from tests.models.common import manifest, meta_model


def _entries(model: torch.nn.Module) -> dict[str, tuple[list[int], str]]:
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}


def test_state_dict_equals_the_detector_part_of_the_official_file():
    m = manifest("sam3")
    official = {k: (shape, dtype) for k, shape, dtype, _ in m["keys"]}
    detector = {k.removeprefix("detector."): v for k, v in official.items()
                if k.startswith("detector.")}
    tracker = {k for k in official if k.startswith(TRACKER_PREFIXES)}
    assert len(detector) == 1156 and len(tracker) == 309
    assert set(official) == {f"detector.{k}" for k in detector} | tracker  # nothing else
    model = meta_model(MODEL_REGISTRY, "sam3")
    ours = _entries(model)
    assert sorted(set(detector) - set(ours)) == []
    assert sorted(set(ours) - set(detector)) == []
    assert {k: v for k, v in ours.items() if detector[k] != v} == {}
    # Parameters vs buffers as the official model (the RoPE tables are persistent buffers)
    params = {k.removeprefix("detector.") for k, _, _, is_param in m["keys"]
              if is_param and k.startswith("detector.")}
    assert {k for k, _ in model.named_parameters()} == params
    assert sum(p.numel() for p in model.parameters()) == m["detector_parameters"] == 848_311_862


def test_registry_entry():
    entry = MODEL_REGISTRY["sam3"]
    assert entry.official_file == "sam3.pt" == manifest("sam3")["checkpoint"]
    assert model_kind("sam3") is ConceptModel and model_kind("sam3_tiny_test") is ConceptModel
    model = meta_model(MODEL_REGISTRY, "sam3")
    assert isinstance(model, Sam3) and model.image_size == 1008 and model.vocab_size == 49408


def _official_layout(state: dict[str, torch.Tensor], wrap: bool = True) -> dict:
    """A file as the official one: the model under `detector.`, a tracker beside it (tensors
    of the official tracker's key names; their values are never read)."""
    tracker = {k: torch.zeros(1) for k, *_ in manifest("sam3")["keys"]
               if k.startswith("tracker.")}
    sd = {**{f"detector.{k}": v for k, v in state.items()}, **tracker}
    return {"model": sd} if wrap else sd


@pytest.mark.parametrize("wrap", [True, False])
def test_a_file_in_the_official_layout_loads_strictly(tmp_path, wrap):
    source = build_model("sam3_tiny_test", seed=3)
    path = tmp_path / "sam3.pt"
    torch.save(_official_layout(source.state_dict(), wrap), path)
    loaded = build_model("sam3_tiny_test", checkpoint=path)
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.checkpoint_sha256 is not None
    assert check_checkpoint("sam3_tiny_test", str(path), None) == loaded.checkpoint_sha256


def test_missing_and_unexpected_detector_keys_are_named(tmp_path):
    state = build_model("sam3_tiny_test", seed=0).state_dict()
    dropped = "dot_prod_scoring.hs_proj.weight"
    bad = _official_layout({k: v for k, v in state.items() if k != dropped})
    bad["model"]["detector.extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(CheckpointError) as e:
        build_model("sam3_tiny_test", checkpoint=path)
    assert dropped in str(e.value) and "extra_head.weight" in str(e.value)
    with pytest.raises(PreflightError, match="model.checkpoint: .* does not fit sam3_tiny_test"):
        check_checkpoint("sam3_tiny_test", str(path), None)


def test_another_models_file_is_refused_before_work(tmp_path):
    path = tmp_path / "sam_tiny.pt"
    torch.save(build_model("sam_tiny", seed=0).state_dict(), path)
    with pytest.raises(PreflightError, match="does not fit sam3_tiny_test"):
        check_checkpoint("sam3_tiny_test", str(path), None)
