"""SAM 3's segmentation head (models/sam3/segmentation.py) against the official
`UniversalSegmentationHead` and `PixelDecoder` (PyPI sam3 0.1.4) on the same seeded random
weights.

Reduced width (C 32) on the image model's three maps (4x, 2x, 1x a 4x3 token grid): batch 2 of
two images (in swapped order) and two prompts of one image (its maps broadcast), padded
prompts; the pixel decoder alone on four maps (all three stages). The full size (C 256, maps
288, 144 and 72 of a 1008 input, 200 queries) once, slow. Mask and semantic logits to 1e-4
relative (max abs difference over max abs value). Ours is built of our attention and MLP
(models/sam3/attention.py)."""

from __future__ import annotations

import types

import pytest
import torch

from models.sam3.attention import MLP, MultiheadAttention
from models.sam3.segmentation import MaskPredictor, PixelDecoder, UniversalSegmentationHead
from tests.models.common import manifest, max_rel, seeded_std

TOL = 1e-4
SMALL = dict(hidden_dim=32, num_heads=4)
FULL = dict(hidden_dim=256, num_heads=8)




@pytest.fixture(scope="module")
def off() -> types.SimpleNamespace:
    try:
        from tests.golden.make_sam3_official import cpu_only, official

        return types.SimpleNamespace(
            seg=official("sam3.model.maskformer_segmentation"),
            misc=official("sam3.model.model_misc"), builder=official("sam3.model_builder"),
            cpu_only=cpu_only)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")


def _official(off, hidden_dim: int, num_heads: int) -> torch.nn.Module:
    """The official head as `_create_segmentation_head` builds it, at any width."""
    with off.cpu_only():
        decoder = off.seg.PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest",
                                       hidden_dim=hidden_dim)
        attn = off.misc.MultiheadAttentionWrapper(num_heads=num_heads, dropout=0,
                                                  embed_dim=hidden_dim)
        return off.seg.UniversalSegmentationHead(
            hidden_dim=hidden_dim, upsampling_stages=3, aux_masks=False, presence_head=False,
            dot_product_scorer=None, act_ckpt=True, cross_attend_prompt=attn,
            pixel_decoder=decoder).eval()


def _ours(hidden_dim: int, num_heads: int) -> UniversalSegmentationHead:
    return UniversalSegmentationHead(
        hidden_dim, PixelDecoder(hidden_dim, 3),
        MaskPredictor(MLP(hidden_dim, hidden_dim, hidden_dim, 3)),
        MultiheadAttention(hidden_dim, num_heads)).eval()


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * seeded_std(p))


def _pair(off, cfg: dict) -> tuple[torch.nn.Module, UniversalSegmentationHead]:
    official = _official(off, **cfg)
    _randomise(official)
    ours = _ours(**cfg)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


def _inputs(images: int, b: int, c: int, h: int, w: int, queries: int, prompt_len: int,
            extra_tokens: int = 0, seed: int = 1) -> dict:
    """Neck maps (4x, 2x, 1x the h x w grid), 2 decoder layers of queries, encoder tokens
    (image tokens first), a padded prompt."""
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(images, c, h * s, w * s, generator=gen) for s in (4, 2, 1)]
    mask = torch.zeros(b, prompt_len, dtype=torch.bool)
    mask[-1, prompt_len // 2:] = True
    return dict(backbone_feats=feats,
                obj_queries=torch.randn(2, b, queries, c, generator=gen),
                encoder_hidden_states=torch.randn(h * w + extra_tokens, b, c, generator=gen),
                prompt=torch.randn(prompt_len, b, c, generator=gen), prompt_mask=mask)


CASES = {  # images, image_ids, extra encoder tokens
    "two_images_swapped": (2, [1, 0], 0),
    "one_image_two_prompts": (1, [0, 0], 0),
    "extra_tokens_after_the_image": (2, [0, 1], 5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_segmentation_head_matches_official(off, name):
    images, ids, extra = CASES[name]
    official, ours = _pair(off, SMALL)
    x = _inputs(images, 2, SMALL["hidden_dim"], 4, 3, queries=5, prompt_len=6,
                extra_tokens=extra)
    image_ids = torch.tensor(ids)
    with torch.no_grad():
        with off.cpu_only():
            want = official(image_ids=image_ids, **x)
        got = ours(image_ids=image_ids, **x)
    assert set(got) == set(want) == {"pred_masks", "semantic_seg", "presence_logit"}
    assert got["presence_logit"] is None and want["presence_logit"] is None
    assert got["pred_masks"].shape == want["pred_masks"].shape == (2, 5, 16, 12)
    assert got["semantic_seg"].shape == want["semantic_seg"].shape == (2, 1, 16, 12)
    for key in ("pred_masks", "semantic_seg"):
        assert max_rel(got[key], want[key]) <= TOL, key
        assert want[key].std() > 0.1, key  # not degenerate


def test_masks_follow_the_prompt_and_the_image(off):
    """Padding the prompt, or giving a prompt the other image, changes its masks."""
    _, ours = _pair(off, SMALL)
    x = _inputs(2, 2, SMALL["hidden_dim"], 4, 3, queries=5, prompt_len=6)
    with torch.no_grad():
        base = ours(image_ids=torch.tensor([0, 1]), **x)["pred_masks"]
        other = ours(image_ids=torch.tensor([0, 0]), **x)["pred_masks"]
        x["prompt_mask"][0, 3:] = True
        padded = ours(image_ids=torch.tensor([0, 1]), **x)["pred_masks"]
    top = base.abs().max()
    assert torch.equal(base[0], other[0]) and (base[1] - other[1]).abs().max() > 0.05 * top
    assert (base[0] - padded[0]).abs().max() > 0.01 * top and torch.equal(base[1], padded[1])


def test_pixel_decoder_on_four_maps_matches_official(off):
    """Four maps use all three conv stages (the image model's three use two)."""
    c = 16
    with off.cpu_only():
        official = off.seg.PixelDecoder(hidden_dim=c, num_upsampling_stages=3)
    _randomise(official)
    ours = PixelDecoder(c, 3)
    ours.load_state_dict(official.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(4)
    feats = [torch.randn(2, c, 5 * s, 3 * s, generator=gen) for s in (8, 4, 2, 1)]
    with torch.no_grad():
        want, got = official(feats), ours(feats)
    assert got.shape == (2, c, 40, 24)
    assert max_rel(got, want) <= TOL
    with pytest.raises(ValueError, match="expected 1 to 4 maps, got 5"):
        ours(feats + feats[-1:])


def test_errors_say_what_was_expected():
    predictor = MaskPredictor(MLP(8, 8, 8, 3))
    with pytest.raises(ValueError, match=r"expected queries BxQxC .* got \[2, 3, 5, 8\]"):
        predictor(torch.zeros(2, 3, 5, 8), torch.zeros(3, 8, 4, 4))


def test_full_size_keys_equal_official(off):
    """Our full-size head's state dict: the keys, shapes and dtypes of the official builder's
    and of `detector.segmentation_head.*` in the sam3.pt manifest, in order."""
    with torch.device("meta"):
        ours = _ours(**FULL)
    with off.cpu_only():
        official = off.builder._create_segmentation_head()
    entries = [(k, list(v.shape), v.dtype) for k, v in ours.state_dict().items()]
    assert entries == [(k, list(v.shape), v.dtype) for k, v in official.state_dict().items()]
    prefix = "detector.segmentation_head."
    listed = [(k.removeprefix(prefix), shape, dtype) for k, shape, dtype, _ in
              manifest("sam3")["keys"] if k.startswith(prefix)]
    assert [(k, s, str(d).removeprefix("torch.")) for k, s, d in entries] == listed


@pytest.mark.slow
def test_full_size_matches_official(off):
    """The builder's head (C 256) on the neck's 288, 144 and 72 maps of a 1008 input: one
    image, one prompt of 33 tokens, 200 queries."""
    with off.cpu_only():
        official = off.builder._create_segmentation_head().eval()
    _randomise(official)
    ours = _ours(**FULL)
    ours.load_state_dict(official.state_dict(), strict=True)
    x = _inputs(1, 1, 256, 72, 72, queries=200, prompt_len=33)
    image_ids = torch.tensor([0])
    with torch.no_grad():
        with off.cpu_only():
            want = official(image_ids=image_ids, **x)
        got = ours(image_ids=image_ids, **x)
    assert got["pred_masks"].shape == (1, 200, 288, 288)
    for key in ("pred_masks", "semantic_seg"):
        assert max_rel(got[key], want[key]) <= TOL, key
        assert want[key].std() > 0.1, key
