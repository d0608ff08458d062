"""SAM 3's geometry encoder and RoIAlign (models/sam3/geometry.py, roi_align.py) against the
official `SequenceGeometryEncoder` (PyPI sam3 0.1.4) on the same seeded random weights.

Reduced width (C 32, a 6x5 map, batch 2) for the empty prompt (the text-only path: the CLS
token alone, which still attends to the image), one box, and two boxes plus a point with
padding and negative labels; the full-size encoder (C 256, 72x72 map) once, slow. Tokens and
masks to 1e-4 relative (max abs difference over max abs value), padding rows included. Ours
is built of our layer, attention and position encoding (fusion.py, attention.py, position.py).
RoIAlign against the tests' plain-loop reference of torchvision's definition."""

from __future__ import annotations

import types

import pytest
import torch

from models.sam3.fusion import FusionEncoderLayer
from models.sam3.geometry import Prompt, SequenceGeometryEncoder, concat_padded
from models.sam3.position import PositionEmbeddingSine
from models.sam3.roi_align import roi_align
from tests.models.common import manifest, max_rel, seeded_std

TOL = 1e-4
SMALL = dict(d_model=32, num_heads=4, dim_feedforward=64, num_layers=2)
FULL = dict(d_model=256, num_heads=8, dim_feedforward=2048, num_layers=3)




@pytest.fixture(scope="module")
def off() -> types.SimpleNamespace:
    """The official modules this file needs, with the stand-ins of make_sam3_official."""
    try:
        from tests.golden.make_sam3_official import cpu_only, official
        from tests.golden.make_sam3_official import roi_align as reference

        mods = types.SimpleNamespace(
            geo=official("sam3.model.geometry_encoders"), enc=official("sam3.model.encoder"),
            misc=official("sam3.model.model_misc"), pe=official("sam3.model.position_encoding"),
            builder=official("sam3.model_builder"), cpu_only=cpu_only)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")
    # The stand-in `torchvision.ops.roi_align` is shadowed by its submodule stand-in; give the
    # official geometry encoder the reference function itself
    mods.geo.torchvision = types.SimpleNamespace(ops=types.SimpleNamespace(roi_align=reference))
    return mods


def _layer(off, d_model: int, num_heads: int, dim_feedforward: int, **_) -> torch.nn.Module:
    """The official geometry encoder's transformer layer (pre-norm, position on image keys)."""
    attn = off.misc.MultiheadAttentionWrapper
    return off.enc.TransformerEncoderLayer(
        activation="relu", d_model=d_model, dim_feedforward=dim_feedforward, dropout=0.1,
        pos_enc_at_attn=False, pre_norm=True, pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        self_attention=attn(num_heads=num_heads, dropout=0.1, embed_dim=d_model),
        cross_attention=attn(num_heads=num_heads, dropout=0.1, embed_dim=d_model))


def _official(off, cfg: dict) -> torch.nn.Module:
    with off.cpu_only():
        return off.geo.SequenceGeometryEncoder(
            pos_enc=off.pe.PositionEmbeddingSine(cfg["d_model"]), encode_boxes_as_points=False,
            points_direct_project=True, points_pool=True, points_pos_enc=True,
            boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True,
            d_model=cfg["d_model"], num_layers=cfg["num_layers"], layer=_layer(off, **cfg),
            add_cls=True, add_post_encode_proj=True).eval()


def _ours(cfg: dict) -> SequenceGeometryEncoder:
    layer = FusionEncoderLayer(cfg["d_model"], cfg["num_heads"], cfg["dim_feedforward"],
                               pos_enc_at_attn=False, pos_enc_at_cross_attn_keys=True,
                               batch_first=False)
    return SequenceGeometryEncoder(cfg["d_model"], PositionEmbeddingSine(cfg["d_model"]), layer,
                                   cfg["num_layers"]).eval()


def _pair(off, cfg: dict, seed: int = 0) -> tuple[torch.nn.Module, SequenceGeometryEncoder]:
    """(official, ours) with one set of seeded normal weights (`seeded_std`)."""
    official = _official(off, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in official.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * seeded_std(p))
    ours = _ours(cfg)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


def _image(b: int, h: int, w: int, c: int, seed: int = 1) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(h * w, b, c, generator=gen)], [torch.randn(h * w, b, c, generator=gen)]


BOXES = torch.tensor([[[0.5, 0.45, 0.4, 0.6], [0.3, 0.6, 0.2, 0.3]],
                      [[0.7, 0.2, 0.35, 0.3], [0.12, 0.1, 0.1, 0.15]]])  # 2 boxes x B 2, cxcywh
PROMPTS = {
    "empty": dict(box_embeddings=torch.zeros(0, 2, 4),
                  box_mask=torch.zeros(2, 0, dtype=torch.bool)),
    "one_box": dict(box_embeddings=BOXES[:1], box_labels=torch.tensor([[1, 0]])),
    "two_boxes_and_a_point": dict(
        box_embeddings=BOXES, box_mask=torch.tensor([[False, False], [False, True]]),
        box_labels=torch.tensor([[1, 0], [0, 1]]),
        point_embeddings=torch.tensor([[[0.2, 0.8], [0.9, 0.3]]]),
        point_mask=torch.tensor([[False], [True]]), point_labels=torch.tensor([[0, 1]])),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_geometry_encoder_matches_official(off, name):
    official, ours = _pair(off, SMALL)
    feats, pos = _image(2, 6, 5, SMALL["d_model"])
    with torch.no_grad():
        with off.cpu_only():
            want, want_mask = official(off.geo.Prompt(**PROMPTS[name]), feats, [(6, 5)], pos)
        got, mask = ours(Prompt(**PROMPTS[name]), feats, [(6, 5)], pos)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.equal(mask, want_mask)
    assert max_rel(got, want) <= TOL
    assert want.std() > 0.1  # not degenerate
    n = {"empty": 1, "one_box": 2, "two_boxes_and_a_point": 4}[name]
    assert got.shape == (n, 2, SMALL["d_model"])


def test_padding_and_order_of_tokens(off):
    """Prompt 1's box follows its (absent) point: valid tokens first, then CLS, then padding."""
    _, ours = _pair(off, SMALL)
    feats, pos = _image(2, 6, 5, SMALL["d_model"])
    with torch.no_grad():
        _, mask = ours(Prompt(**PROMPTS["two_boxes_and_a_point"]), feats, [(6, 5)], pos)
    assert mask.tolist() == [[False] * 4, [False, False, True, True]]


def test_text_only_token_attends_to_the_image(off):
    """The empty prompt's CLS token changes with the image (it is not a constant)."""
    _, ours = _pair(off, SMALL)
    feats, pos = _image(2, 6, 5, SMALL["d_model"])
    other, _ = _image(2, 6, 5, SMALL["d_model"], seed=7)
    with torch.no_grad():
        a, _ = ours(Prompt(**PROMPTS["empty"]), feats, [(6, 5)], pos)
        b, _ = ours(Prompt(**PROMPTS["empty"]), other, [(6, 5)], pos)
    assert (a - b).abs().max() > 0.1 * a.abs().max()


def test_boxes_read_the_image_where_they_are(off):
    """Moving a box changes its token; a positive and a negative label differ."""
    _, ours = _pair(off, SMALL)
    feats, pos = _image(2, 6, 5, SMALL["d_model"])
    moved = BOXES[:1].clone()
    moved[..., 0] += 0.2
    with torch.no_grad():
        a, _ = ours(Prompt(box_embeddings=BOXES[:1]), feats, [(6, 5)], pos)
        b, _ = ours(Prompt(box_embeddings=moved), feats, [(6, 5)], pos)
        c, _ = ours(Prompt(box_embeddings=BOXES[:1], box_labels=torch.zeros(1, 2).long()),
                    feats, [(6, 5)], pos)
    top = a[0].abs().max()
    # (about 6% and 4% of the largest entry with these weights; parity is 1e-4)
    assert (a[0] - b[0]).abs().max() > 0.02 * top and (a[0] - c[0]).abs().max() > 0.02 * top


def test_prompt_appends_as_official(off):
    """append_boxes / append_points pack each prompt's new entries after its valid ones."""
    mask = torch.tensor([[False, True], [False, False]])
    new_mask = torch.tensor([[False], [True]])
    ours = Prompt(box_embeddings=BOXES, box_mask=mask, box_labels=torch.tensor([[1, 1], [0, 1]]))
    theirs = off.geo.Prompt(box_embeddings=BOXES, box_mask=mask,
                            box_labels=torch.tensor([[1, 1], [0, 1]]))
    for p in (ours, theirs):
        p.append_boxes(BOXES[1:] + 0.01, torch.tensor([[0, 1]]), new_mask)
        p.append_points(torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(0)),
                        torch.tensor([[1, 0], [0, 0]]))
    for field in ("box_embeddings", "box_mask", "box_labels", "point_embeddings", "point_mask",
                  "point_labels"):
        assert torch.equal(getattr(ours, field), getattr(theirs, field)), field
    assert ours.box_mask.tolist() == [[False, False, True], [False, False, True]]


def test_concat_padded_matches_official(off):
    gen = torch.Generator().manual_seed(3)
    seq1, seq2 = torch.randn(3, 4, 5, generator=gen), torch.randn(2, 4, 5, generator=gen)
    mask1 = torch.tensor([[0, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1]]).bool()
    mask2 = torch.tensor([[0, 0], [0, 1], [0, 0], [1, 1]]).bool()
    got = concat_padded(seq1, mask1, seq2, mask2)
    want = off.geo.concat_padded_sequences(seq1, mask1, seq2, mask2)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="expected sequences"):
        concat_padded(seq1, mask1, seq2, mask1)


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="expected box labels 2x2, got"):
        Prompt(box_embeddings=BOXES, box_labels=torch.ones(2, 3).long())
    with pytest.raises(ValueError, match=r"expected point coordinates Nx2x2"):
        Prompt(box_embeddings=BOXES, point_embeddings=torch.zeros(1, 2, 3))


def test_full_size_keys_equal_official(off):
    """Our full-size encoder's state dict: the keys, shapes and dtypes of the official builder's
    and of `detector.geometry_encoder.*` in the sam3.pt manifest, in order."""
    with torch.device("meta"):
        ours = _ours(FULL)
    with off.cpu_only():
        official = off.builder._create_geometry_encoder()
    entries = [(k, list(v.shape), v.dtype) for k, v in ours.state_dict().items()]
    assert entries == [(k, list(v.shape), v.dtype) for k, v in official.state_dict().items()]
    prefix = "detector.geometry_encoder."
    listed = [(k.removeprefix(prefix), shape, dtype) for k, shape, dtype, _ in
              manifest("sam3")["keys"] if k.startswith(prefix)]
    assert [(k, s, str(d).removeprefix("torch.")) for k, s, d in entries] == listed


@pytest.mark.slow
def test_full_size_matches_official(off):
    """The builder's encoder (C 256, 3 layers) on a 72x72 map, the three prompts (batch 2)."""
    with off.cpu_only():
        official = off.builder._create_geometry_encoder().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in official.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * seeded_std(p))
    ours = _ours(FULL)
    ours.load_state_dict(official.state_dict(), strict=True)
    feats, pos = _image(2, 72, 72, FULL["d_model"])
    for name, prompt in PROMPTS.items():
        with torch.no_grad():
            with off.cpu_only():
                want, want_mask = official(off.geo.Prompt(**prompt), feats, [(72, 72)], pos)
            got, mask = ours(Prompt(**prompt), feats, [(72, 72)], pos)
        assert torch.equal(mask, want_mask), name
        assert max_rel(got, want) <= TOL, name
        assert want.std() > 0.1, name


# RoIAlign --------------------------------------------------------------------------------

ROI_BOXES = [torch.tensor([[0.5, 1.0, 7.3, 8.9], [-2.0, -1.5, 3.0, 2.0], [3.0, 3.0, 3.2, 3.1],
                           [9.5, 7.5, 14.0, 12.0]]),
             torch.tensor([[1.0, 2.0, 10.9, 8.5], [0.0, 0.0, 11.0, 9.0]])]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("output_size,spatial_scale", [(7, 1.0), ((3, 4), 0.5)])
def test_roi_align_matches_reference(aligned, sampling_ratio, output_size, spatial_scale):
    from tests.golden.make_sam3_official import roi_align as reference

    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    want = reference(x, ROI_BOXES, *args)
    got = roi_align(x, ROI_BOXES, *args)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5
    assert want.abs().max() > 0.1
    # A Kx5 tensor (image index first) is the same boxes
    indexed = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                         for i, b in enumerate(ROI_BOXES)])
    assert torch.equal(roi_align(x, indexed, *args), got)


def test_roi_align_float64_is_exact():
    """In float64 the separable form equals the sample-by-sample loop to rounding."""
    from tests.golden.make_sam3_official import roi_align as reference

    x = torch.randn(2, 4, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    boxes = [b.double() * 1.1 for b in ROI_BOXES]
    for aligned in (False, True):
        diff = roi_align(x, boxes, 5, 1.0, -1, aligned) - reference(x, boxes, 5, 1.0, -1, aligned)
        assert diff.abs().max() <= 1e-12


def test_roi_align_edges():
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    assert roi_align(x, [torch.zeros(0, 4)], 7).shape == (0, 2, 7, 7)
    far = roi_align(x, [torch.tensor([[10.0, 10.0, 14.0, 14.0]])], 2)
    assert torch.equal(far, torch.zeros(1, 2, 2, 2))  # every sample outside the map
    with pytest.raises(ValueError, match=r"expected the boxes of image 0 Kx4 XYXY, got \[1, 3\]"):
        roi_align(x, [torch.zeros(1, 3)], 7)
    with pytest.raises(ValueError, match="expected input NxCxHxW"):
        roi_align(x[0], [torch.zeros(1, 4)], 7)
