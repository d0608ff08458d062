"""SAM 2.1 against the official state dicts: our image path plus the declared video-only keys
is exactly the official SAM2Base state dict (tests/data/sam2_1_hiera_*.manifest.json, from
tests/golden/make_sam2_manifest.py), and files in the official layout load through
`build_model` strictly."""

from __future__ import annotations

import pytest
import torch

from models import MODEL_REGISTRY, CheckpointError, build_model
from models.checkpoint import seeded_state_dict
from models.sam2 import VIDEO_ONLY_PREFIXES, Sam2
from tests.models.common import manifest, meta_model

SIZES = ["sam2_1_hiera_t", "sam2_1_hiera_s", "sam2_1_hiera_b_plus", "sam2_1_hiera_l"]
FILES = {"sam2_1_hiera_t": "sam2.1_hiera_tiny.pt", "sam2_1_hiera_s": "sam2.1_hiera_small.pt",
         "sam2_1_hiera_b_plus": "sam2.1_hiera_base_plus.pt",
         "sam2_1_hiera_l": "sam2.1_hiera_large.pt"}
# Parameters of the whole official model (the figures) and of our image path
PARAMS = {"sam2_1_hiera_t": (38_962_498, 31_440_721), "sam2_1_hiera_s": (46_060_354, 38_538_577),
          "sam2_1_hiera_b_plus": (80_850_178, 73_328_401),
          "sam2_1_hiera_l": (224_446_642, 216_924_865)}


def _entries(model: torch.nn.Module) -> dict[str, tuple[list[int], str]]:
    return {k: (list(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", SIZES)
def test_image_path_plus_video_keys_equal_official_manifest(name):
    m = manifest(name)
    ours = _entries(meta_model(MODEL_REGISTRY, name))
    official = {k: (shape, dtype) for k, shape, dtype, _ in m["keys"]}
    video = {k for k in official if k.startswith(VIDEO_ONLY_PREFIXES)}
    # Every official key is ours or declared video-only, never both; nothing of ours is extra
    assert sorted(set(official) - set(ours) - video) == []
    assert sorted(set(ours) - set(official)) == []
    assert not video & set(ours)
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    # Every declared prefix names something in the official model
    assert all(any(k.startswith(p) for k in video) for p in VIDEO_ONLY_PREFIXES)
    # Parameter counts: 38.9M / 46.0M / 80.8M / 224.4M for the whole official model
    total, image_path = PARAMS[name]
    assert m["num_parameters"] == total
    model = meta_model(MODEL_REGISTRY, name)
    assert sum(p.numel() for p in model.parameters()) == image_path
    assert m["image_path_numel"] == sum(v.numel() for v in model.state_dict().values())
    params = {k for k, _, _, is_param in m["keys"] if is_param}
    assert {k for k, _ in model.named_parameters()} == params - video


@pytest.mark.parametrize("name", SIZES)
def test_registry_entry_names_the_official_file(name):
    entry = MODEL_REGISTRY[name]
    assert entry.official_file == FILES[name] == manifest(name)["checkpoint"]
    model = meta_model(MODEL_REGISTRY, name)
    assert isinstance(model, Sam2)
    assert model.embedding_shape == (256, 64, 64)
    assert model.input_hw((480, 640)) == (1024, 1024)
    assert model.high_res_shapes == [(32, 256, 256), (64, 128, 128)]


def _official_layout_file(name: str, path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write `{"model": sd}` as the official files hold it: our seeded image path plus every
    video-only key of the manifest (seeded too), in the manifest's order. Returns our part."""
    model = MODEL_REGISTRY[name]()
    ours = seeded_state_dict(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for k, shape, dtype, _ in manifest(name)["keys"]:
        sd[k] = ours[k] if k in ours else torch.randn(shape, generator=gen).to(getattr(torch,
                                                                                      dtype))
    torch.save({"model": sd}, path)
    return ours


@pytest.mark.parametrize("name", [
    "sam2_1_hiera_t",
    *[pytest.param(n, marks=pytest.mark.slow) for n in SIZES[1:]],
])
def test_official_layout_file_loads_through_build_model(name, tmp_path):
    path = tmp_path / FILES[name]
    ours = _official_layout_file(name, path)
    model = build_model(name, checkpoint=path)
    loaded = model.state_dict()
    assert loaded.keys() == ours.keys()
    assert all(torch.equal(loaded[k], ours[k]) for k in ours)
    assert model.checkpoint_sha256 is not None


def _tiny_file(tmp_path, extra: dict | None = None, drop: str | None = None):
    model = MODEL_REGISTRY["sam2_tiny_test"]()
    sd = dict(seeded_state_dict(model, 3))
    sd["memory_encoder.out_proj.weight"] = torch.zeros(4, 4)  # a video key: skipped
    sd.update(extra or {})
    if drop:
        del sd[drop]
    path = tmp_path / "sam2.pt"
    torch.save({"model": sd}, path)
    return path


def test_video_keys_are_skipped_and_anything_else_is_an_error(tmp_path):
    model = build_model("sam2_tiny_test", checkpoint=_tiny_file(tmp_path))
    assert not any(k.startswith(VIDEO_ONLY_PREFIXES) for k in model.state_dict())
    # An unknown key that is not declared video-only is named
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): sam_mask_decoder.extra"):
        build_model("sam2_tiny_test", checkpoint=_tiny_file(
            tmp_path, extra={"sam_mask_decoder.extra": torch.zeros(1)}))
    # A missing image-path key is named
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): no_mem_embed"):
        build_model("sam2_tiny_test", checkpoint=_tiny_file(tmp_path, drop="no_mem_embed"))
    # A plain state dict (not under "model") of the image path alone loads too
    path = tmp_path / "plain.pt"
    torch.save(seeded_state_dict(MODEL_REGISTRY["sam2_tiny_test"](), 4), path)
    build_model("sam2_tiny_test", checkpoint=path)
