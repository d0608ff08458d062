"""Our SAM 3 vision side (models/sam3: vit, rope, position, neck) against the official modules
of PyPI `sam3==0.1.4` on the same seeded random weights.

Default suite: a reduced config (168 px, patch 14: a 12x12 grid, windows of 8 padded to 16,
a position table from 112 px tiled and cropped, 5 blocks with global blocks 1 and 3, so one
windowed block runs after the last global one), the sine encodings, the RoPE rotations at full
size, and the full-size state dict layout (meta device, and tests/data/sam3.manifest.json).
Slow: the full-size trunk and dual neck on one 1008 px image. Features are compared as max abs
difference over max abs value (<= 1e-4)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from models.sam3.neck import Sam3DualViTDetNeck, build_sam3_vision, sam3_vision_state_spec
from models.sam3.position import PositionEmbeddingSine
from models.sam3.rope import axial_frequencies
from models.sam3.vit import ViT
from tests.models.common import DATA, max_rel

TOL = 1e-4
SMALL = dict(img_size=168, patch_size=14, embed_dim=64, depth=5, num_heads=4, mlp_ratio=4.625,
             window_size=8, global_att_blocks=(1, 3), pretrain_img_size=112)
SMALL_D_MODEL = 32

# importing the official package scripts a few functions (torch.jit.script, deprecated in 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated",
                                        "ignore:CUDA is not available")


def _official(name: str):
    from tests.golden.make_sam3_official import official

    try:
        return official(name)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")


def _cpu_only():
    from tests.golden.make_sam3_official import cpu_only

    return cpu_only()



def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: expected shape {ref.shape}, got {ours.shape}"
    assert ref.float().std() > 1e-3, f"{what}: degenerate reference"
    assert max_rel(ours, ref) <= TOL, f"{what}: rel {max_rel(ours, ref):.2e}"


def _randomise(model: nn.Module, seed: int, std: float) -> None:
    """Every parameter redrawn: weights N(0, std), LayerNorm weights 1 + N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm = p.ndim == 1 and ("norm" in name or "ln_pre" in name)
            p.copy_(1 + 0.1 * noise if is_norm and name.endswith("weight") else std * noise)


def _official_vit(**overrides):
    vitdet = _official("sam3.model.vitdet")
    cfg = dict(SMALL, norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True,
               use_abs_pos=True, tile_abs_pos=True, rel_pos_blocks=(), use_rope=True,
               use_interp_rope=True, pretrain_use_cls_token=True, retain_cls_token=False,
               ln_pre=True, ln_post=False, return_interm_layers=False, bias_patch_embed=False)
    cfg.update(overrides)
    with _cpu_only():
        return vitdet.ViT(**cfg).eval()


def _official_neck(add_sam2_neck: bool):
    necks = _official("sam3.model.necks")
    pe = _official("sam3.model.position_encoding")
    with _cpu_only():
        neck = necks.Sam3DualViTDetNeck(
            _official_vit(), pe.PositionEmbeddingSine(SMALL_D_MODEL, normalize=True),
            d_model=SMALL_D_MODEL, scale_factors=(4.0, 2.0, 1.0, 0.5),
            add_sam2_neck=add_sam2_neck)
    _randomise(neck, seed=0, std=0.1)
    return neck.eval()


def _small_neck(add_sam2_neck: bool) -> Sam3DualViTDetNeck:
    return Sam3DualViTDetNeck(ViT(**SMALL), PositionEmbeddingSine(SMALL_D_MODEL),
                              d_model=SMALL_D_MODEL, add_sam2_neck=add_sam2_neck).eval()


def _layout(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("add_sam2_neck", [True, False])
def test_small_layout_and_rope_rotations_equal_official(add_sam2_neck):
    ref = _official_neck(add_sam2_neck)
    ours = _small_neck(add_sam2_neck)
    assert _layout(ours) == _layout(ref)
    assert {k for k, _ in ours.named_buffers()} == {k for k, _ in ref.named_buffers()}
    ref_sd = ref.state_dict()
    for key, value in ours.state_dict().items():
        if key.endswith("freqs_cis"):  # computed by us, not loaded
            torch.testing.assert_close(value, ref_sd[key], atol=1e-6, rtol=0)


def test_full_size_rope_rotations_equal_official():
    """The 72x72 global grid's rotations, positions scaled by 24/72 (window -> grid)."""
    vitdet = _official("sam3.model.vitdet")
    with _cpu_only():
        attn = vitdet.Attention(1024, num_heads=16, input_size=(72, 72), use_rope=True,
                                rope_pt_size=(24, 24), rope_interp=True)
    ours = axial_frequencies(64, 72, 72, scale=24 / 72)
    assert ours.dtype == torch.complex64
    torch.testing.assert_close(ours, attn.freqs_cis, atol=1e-6, rtol=0)


def test_small_trunk_matches_official():
    ref = _official_neck(add_sam2_neck=False).trunk
    ours = ViT(**SMALL).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 168, 168, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), _cpu_only():
        expected = ref(x)
    with torch.no_grad():
        got = ours(x)
    assert len(got) == len(expected) == 1
    assert got[0].shape == (2, 64, 12, 12)
    _assert_close(got[0], expected[0], "trunk")


@pytest.mark.parametrize("add_sam2_neck", [True, False])
def test_small_neck_matches_official(add_sam2_neck):
    ref = _official_neck(add_sam2_neck)
    ours = _small_neck(add_sam2_neck)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 168, 168, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), _cpu_only():
        expected = ref(x)
    with torch.no_grad():
        got = ours(x)
    sides = [48, 24, 12, 6]
    for i, side in enumerate(sides):
        assert got[0][i].shape == (2, SMALL_D_MODEL, side, side)
        _assert_close(got[0][i], expected[0][i], f"sam3 level {i}")
        _assert_close(got[1][i], expected[1][i], f"sam3 pos {i}")
    if add_sam2_neck:
        for i in range(len(sides)):
            _assert_close(got[2][i], expected[2][i], f"sam2 level {i}")
            _assert_close(got[3][i], expected[3][i], f"sam2 pos {i}")
        assert max_rel(got[2][0], got[0][0]) > 0.1  # the two branches have their own weights
    else:
        assert got[2] is None and got[3] is None and expected[2] is None


def test_trunk_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="expected 168 px"):
        ViT(**SMALL)(torch.zeros(1, 3, 196, 196))


@pytest.mark.parametrize("hw", [(252, 252), (5, 9), (1, 1)])
@pytest.mark.parametrize("normalize", [True, False])
def test_position_map_matches_official(hw, normalize):
    pe = _official("sam3.model.position_encoding")
    ref = pe.PositionEmbeddingSine(256, normalize=normalize)
    ours = PositionEmbeddingSine(256, normalize=normalize)
    x = torch.zeros(2, 7, *hw)
    expected = ref(x)
    got = ours(x)
    assert got.shape == (2, 256, *hw) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_position_precomputed_cache_changes_nothing():
    """The official full-size encoding (precompute_resolution=1008, as the vision backbone
    builds it) answers the neck's sizes from its cache; ours computes them."""
    pe = _official("sam3.model.position_encoding")
    with _cpu_only():
        ref = pe.PositionEmbeddingSine(256, normalize=True, precompute_resolution=1008)
    ours = PositionEmbeddingSine(256)
    for side in (252, 126, 63, 31):  # the cached sizes
        x = torch.zeros(1, 256, side, side)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)


def test_position_boxes_and_points_match_official():
    pe = _official("sam3.model.position_encoding")
    ref = pe.PositionEmbeddingSine(256)
    ours = PositionEmbeddingSine(256)
    gen = torch.Generator().manual_seed(3)
    cx, cy, w, h = torch.rand(4, 6, generator=gen)
    torch.testing.assert_close(ours.encode_boxes(cx, cy, w, h), ref.encode_boxes(cx, cy, w, h),
                               atol=1e-6, rtol=0)
    for a, b in zip(ours._encode_xy(cx, cy), ref._encode_xy(cx, cy), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    px, py = torch.rand(2, 3, 5, generator=gen)
    labels = torch.randint(0, 2, (3, 5), generator=gen).float()
    got = ours.encode_points(px, py, labels)
    assert got.shape == (3, 5, 257)
    torch.testing.assert_close(got, ref.encode_points(px, py, labels), atol=1e-6, rtol=0)
    assert ours.encode_boxes(cx, cy, w, h).std() > 0.1


def test_full_size_layout_equals_the_checkpoint_manifest():
    """Keys, shapes and dtypes of the full-size vision backbone (meta device) in the official
    order, and which are parameters: the detector.backbone.vision_backbone.* part of
    tests/data/sam3.manifest.json (written from the official modules; the slow test compares
    with them directly)."""
    spec = sam3_vision_state_spec(add_sam2_neck=True)
    prefix = "detector.backbone.vision_backbone."
    entries = json.loads((DATA / "sam3.manifest.json").read_text())["keys"]
    manifest = [(k.removeprefix(prefix), tuple(s), d) for k, s, d, _ in entries
                if k.startswith(prefix)]
    assert [(k, s, str(d).removeprefix("torch.")) for k, (s, d) in spec.items()] == manifest
    assert spec["trunk.blocks.7.attn.freqs_cis"] == ((5184, 32), torch.complex64)
    with torch.device("meta"):
        ours = build_sam3_vision(add_sam2_neck=True)
    params = {k.removeprefix(prefix) for k, _, _, is_param in entries
              if k.startswith(prefix) and is_param}
    assert {k for k, _ in ours.named_parameters()} == params
    without = sam3_vision_state_spec(add_sam2_neck=False)
    assert set(spec) - set(without) == {k for k in spec if k.startswith("sam2_convs.")}


@pytest.mark.slow
def test_full_size_vision_matches_official():
    """Trunk + dual neck at 1008 px, one image: every level, the SAM 2 branch and the
    position encodings."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    mb = _official("sam3.model_builder")
    with _cpu_only():
        ref = mb._create_vision_backbone(enable_inst_interactivity=True).eval()
    spec = sam3_vision_state_spec(add_sam2_neck=True)
    assert [(k, s, d) for k, (s, d) in spec.items()] == _layout(ref)
    _randomise(ref, seed=0, std=0.02)
    with torch.device("meta"):
        ours = build_sam3_vision(add_sam2_neck=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)  # shares ref's storage
    x = torch.randn(1, 3, 1008, 1008, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = ours(x)
        with _cpu_only():
            expected = ref(x)
    for i, side in enumerate([288, 144, 72, 36]):
        assert got[0][i].shape == (1, 256, side, side)
        for j, what in enumerate(["sam3 level", "sam3 pos", "sam2 level", "sam2 pos"]):
            _assert_close(got[j][i], expected[j][i], f"{what} {i}")
    assert math.isfinite(got[0][0].abs().max().item())
