"""Our SAM 3 detector transformer (models/sam3/fusion.py, decoder.py, scoring.py) against the
official modules of PyPI `sam3==0.1.4` on the same seeded random weights, called as the
official `Sam3Image._run_encoder`, `_run_decoder` and `_update_scores_and_boxes` call them.

Targets: encoder memory and decoder queries to 1e-4 relative (max abs difference over max abs
value); reference boxes, presence logits, query scores and boxes within 1e-4 absolute. A
reduced width (2 + 2 layers, d_model 64, 20 queries, 12x12 image tokens, a 5-token prompt with
padding, batch 2) in the default suite, the full size once under `slow` (72x72 tokens)."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from models.sam3.decoder import (
    DecoderLayer,
    TransformerDecoder,
    TransformerWrapper,
    build_detector_transformer,
)
from models.sam3.fusion import FusionEncoder, FusionEncoderLayer
from models.sam3.scoring import build_dot_product_scoring, update_scores_and_boxes
from tests.models.common import max_rel

# importing the official package scripts a helper (torch.jit.script, deprecated in torch 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated",
                                        "ignore:CUDA is not available")

SMALL = dict(d_model=64, num_heads=4, dim_feedforward=96, num_encoder_layers=2,
             num_decoder_layers=2, num_queries=20, prompt_hidden_dim=80)
FULL = dict(d_model=256, num_heads=8, dim_feedforward=2048, num_encoder_layers=6,
            num_decoder_layers=6, num_queries=200, prompt_hidden_dim=2048)
EMBEDDINGS = ("query_embed", "reference_points", "presence_token")


def _official():
    try:
        from tests.golden.make_sam3_official import cpu_only, official
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not importable: {e}")
    try:
        return official("sam3.model_builder"), official("sam3.model.sam3_image"), cpu_only
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")


def _official_modules(cfg: dict, pooled_text: bool = False):
    """(official TransformerWrapper, official DotProductScoring, Sam3Image class, cpu_only):
    the builder's `_create_*` configuration at cfg's sizes (the builder itself at full size)."""
    builder, image, cpu_only = _official()
    from sam3.model.decoder import TransformerDecoder as Dec
    from sam3.model.decoder import TransformerDecoderLayer as DecLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.model_misc import MLP as OfficialMLP
    from sam3.model.model_misc import DotProductScoring, MultiheadAttentionWrapper
    from sam3.model.model_misc import TransformerWrapper as Wrapper

    with cpu_only():
        if cfg == FULL and not pooled_text:
            return (builder._create_sam3_transformer(), builder._create_dot_product_scoring(),
                    image.Sam3Image, cpu_only)
        d, h, ff = cfg["d_model"], cfg["num_heads"], cfg["dim_feedforward"]
        enc_layer = TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=ff, dropout=0.1, pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False,
            pre_norm=True,
            self_attention=MultiheadAttentionWrapper(num_heads=h, dropout=0.1, embed_dim=d,
                                                     batch_first=True),
            cross_attention=MultiheadAttentionWrapper(num_heads=h, dropout=0.1, embed_dim=d,
                                                      batch_first=True))
        encoder = TransformerEncoderFusion(
            layer=enc_layer, num_layers=cfg["num_encoder_layers"], d_model=d,
            num_feature_levels=1, frozen=False, use_act_checkpoint=True,
            add_pooled_text_to_img_feat=pooled_text, pool_text_with_mask=True)
        dec_layer = DecLayer(
            activation="relu", d_model=d, dim_feedforward=ff, dropout=0.1,
            cross_attention=MultiheadAttentionWrapper(num_heads=h, dropout=0.1, embed_dim=d),
            n_heads=h, use_text_cross_attention=True)
        decoder = Dec(
            layer=dec_layer, num_layers=cfg["num_decoder_layers"],
            num_queries=cfg["num_queries"], return_intermediate=True, box_refine=True,
            num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False,
            interaction_layer=None, dac_use_selfatt_ln=True, use_act_checkpoint=True,
            presence_token=True)
        prompt_mlp = OfficialMLP(input_dim=d, hidden_dim=cfg["prompt_hidden_dim"], output_dim=d,
                                 num_layers=2, dropout=0.1, residual=True,
                                 out_norm=nn.LayerNorm(d))
        scoring = DotProductScoring(d_model=d, d_proj=d, prompt_mlp=prompt_mlp)
        return Wrapper(encoder=encoder, decoder=decoder, d_model=d), scoring, image.Sam3Image, \
            cpu_only


def _ours(cfg: dict, pooled_text: bool = False):
    sizes = {k: v for k, v in cfg.items() if k != "prompt_hidden_dim"}
    if not pooled_text:
        transformer = build_detector_transformer(**sizes)
    else:
        d, h, ff = cfg["d_model"], cfg["num_heads"], cfg["dim_feedforward"]
        encoder = FusionEncoder(lambda: FusionEncoderLayer(d, h, ff), cfg["num_encoder_layers"],
                                d, add_pooled_text_to_img_feat=True, pool_text_with_mask=True)
        decoder = TransformerDecoder(lambda: DecoderLayer(d, h, ff), cfg["num_decoder_layers"],
                                     d, h, cfg["num_queries"])
        transformer = TransformerWrapper(encoder, decoder, d)
    scoring = build_dot_product_scoring(cfg["d_model"], cfg["d_model"], cfg["prompt_hidden_dim"])
    return transformer, scoring


def _randomise(module: nn.Module, seed: int) -> None:
    """Seeded weights far from the official init (whose zero box head would hide the box
    path): matrices N(0, min(0.1, 1/sqrt(fan_in))), norm scales 1 + N(0, 0.1), biases
    N(0, 0.05), the query / reference / presence embeddings N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.split(".")[-2] in EMBEDDINGS:
                p.copy_(noise)
            elif p.dim() > 1:
                p.copy_(noise * min(0.1, p.shape[1] ** -0.5))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)


def _inputs(cfg: dict, hw: int, bs: int = 2, seed: int = 0):
    """Seq-first image tokens and positions (hw*hw)xBxC, prompt 5xBxC, prompt mask Bx5
    (the first prompt padded after 3 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    d = cfg["d_model"]
    img = torch.randn(hw * hw, bs, d, generator=gen)
    pos = torch.randn(hw * hw, bs, d, generator=gen)
    prompt = torch.randn(5, bs, d, generator=gen)
    mask = torch.zeros(bs, 5, dtype=torch.bool)
    mask[0, 3:] = True
    return img, pos, prompt, mask



def _abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _run_official(transformer, scoring, image_cls, cpu_only, img, pos, prompt, mask, hw):
    """The official encoder, decoder and scoring, as Sam3Image's eval path calls them."""
    fake = types.SimpleNamespace(transformer=transformer, training=False,
                                 use_dot_prod_scoring=True, dot_prod_scoring=scoring,
                                 supervise_joint_box_scores=False)
    with cpu_only(), torch.no_grad():
        enc = transformer.encoder(src=[img.clone()], src_key_padding_mask=None,
                                  src_pos=[pos.clone()], prompt=prompt,
                                  prompt_pos=torch.zeros_like(prompt),
                                  prompt_key_padding_mask=mask, feat_sizes=[(hw, hw)])
        dec = transformer.decoder
        tgt = dec.query_embed.weight.unsqueeze(1).repeat(1, img.shape[1], 1)
        hs, ref, presence, feats = dec(
            tgt=tgt, memory=enc["memory"], memory_key_padding_mask=enc["padding_mask"],
            pos=enc["pos_embed"], reference_boxes=None,
            level_start_index=enc["level_start_index"], spatial_shapes=enc["spatial_shapes"],
            valid_ratios=enc["valid_ratios"], tgt_mask=None, memory_text=prompt,
            text_attention_mask=mask, apply_dac=False)
        out = {}
        image_cls._update_scores_and_boxes(fake, out, hs.transpose(1, 2), ref.transpose(1, 2),
                                           prompt, mask,
                                           dec_presence_out=presence.transpose(1, 2))
    return enc, (hs, ref, presence, feats), out


def _run_ours(transformer, scoring, img, pos, prompt, mask, hw):
    """Ours, called the same way."""
    with torch.no_grad():
        enc = transformer.encoder(src=[img], src_key_padding_mask=None, src_pos=[pos],
                                  prompt=prompt, prompt_pos=torch.zeros_like(prompt),
                                  prompt_key_padding_mask=mask, feat_sizes=[(hw, hw)])
        dec = transformer.decoder
        tgt = dec.query_embed.weight.unsqueeze(1).repeat(1, img.shape[1], 1)
        hs, ref, presence, feats = dec(
            tgt=tgt, memory=enc["memory"], memory_key_padding_mask=enc["padding_mask"],
            pos=enc["pos_embed"], reference_boxes=None,
            level_start_index=enc["level_start_index"], spatial_shapes=enc["spatial_shapes"],
            valid_ratios=enc["valid_ratios"], tgt_mask=None, memory_text=prompt,
            text_attention_mask=mask, apply_dac=False)
        out = update_scores_and_boxes({}, hs.transpose(1, 2), ref.transpose(1, 2), prompt, mask,
                                      scoring=scoring, box_head=dec.bbox_embed,
                                      dec_presence_out=presence.transpose(1, 2))
    return enc, (hs, ref, presence, feats), out


def _pair(cfg: dict, seed: int, pooled_text: bool = False):
    """(ours, official) transformer and scorer with the same seeded random weights, both eval."""
    theirs, their_scoring, image_cls, cpu_only = _official_modules(cfg, pooled_text)
    _randomise(theirs, seed)
    _randomise(their_scoring, seed + 1)
    ours, our_scoring = _ours(cfg, pooled_text)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    our_scoring.load_state_dict(their_scoring.state_dict(), strict=True)
    for m in (theirs, their_scoring, ours, our_scoring):
        m.eval()
    return (ours, our_scoring), (theirs, their_scoring, image_cls, cpu_only)


def _compare(cfg: dict, hw: int, seed: int, pooled_text: bool = False) -> None:
    (ours, our_scoring), (theirs, their_scoring, image_cls, cpu_only) = _pair(
        cfg, seed, pooled_text)
    img, pos, prompt, mask = _inputs(cfg, hw, seed=seed)
    their_enc, their_dec, their_out = _run_official(theirs, their_scoring, image_cls, cpu_only,
                                                    img, pos, prompt, mask, hw)
    enc, dec, out = _run_ours(ours, our_scoring, img, pos, prompt, mask, hw)
    n, layers, d = cfg["num_queries"], cfg["num_decoder_layers"], cfg["d_model"]

    # Encoder
    assert enc["memory"].shape == (hw * hw, 2, d)
    assert max_rel(enc["memory"], their_enc["memory"]) <= 1e-4
    assert torch.equal(enc["pos_embed"], their_enc["pos_embed"])
    assert enc["padding_mask"] is None and their_enc["padding_mask"] is None
    for key in ("memory_text", "level_start_index", "spatial_shapes", "valid_ratios"):
        assert torch.equal(enc[key], their_enc[key]), key
    # Decoder: queries, boxes, presence logits and features
    hs, ref, presence, feats = dec
    assert hs.shape == (layers, n, 2, d) and ref.shape == (layers, n, 2, 4)
    assert presence.shape == (layers, 1, 2) and feats.shape == (1, 2, d)
    assert max_rel(hs, their_dec[0]) <= 1e-4
    assert _abs(ref, their_dec[1]) <= 1e-4
    assert _abs(presence, their_dec[2]) <= 1e-4
    assert max_rel(feats, their_dec[3]) <= 1e-4
    # Scores and boxes
    assert set(out) == set(their_out) == {"queries", "pred_logits", "pred_boxes",
                                          "pred_boxes_xyxy", "presence_logit_dec"}
    assert out["pred_logits"].shape == (2, n, 1) and out["pred_boxes"].shape == (2, n, 4)
    assert out["presence_logit_dec"].shape == (2, 1)
    for key in ("pred_logits", "pred_boxes", "pred_boxes_xyxy", "presence_logit_dec"):
        assert _abs(out[key], their_out[key]) <= 1e-4, key
    assert max_rel(out["queries"], their_out["queries"]) <= 1e-4

    # Not degenerate: scores spread and unclamped, boxes vary and moved from the references,
    # the two prompts score differently, the box bias depends on the boxes
    logits = out["pred_logits"]
    assert logits.std() > 0.05 and logits.abs().max() < 12.0
    assert out["pred_boxes"].std(dim=1).min() > 0.01
    assert (ref[-1] - ref[0]).abs().max() > 0.01
    assert (presence[-1, 0, 0] - presence[-1, 0, 1]).abs() > 1e-3
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_small_transformer_matches_official():
    _compare(SMALL, hw=12, seed=0)


def test_small_transformer_with_pooled_text_matches_official():
    """The pooled-text fusion option (off in SAM 3): `text_pooling_proj` and masked pooling."""
    _compare(SMALL, hw=12, seed=3, pooled_text=True)


def test_encoder_leaves_the_inputs_alone_and_padding_changes_the_output():
    (ours, _), _ = _pair(SMALL, seed=1, pooled_text=True)
    img, pos, prompt, mask = _inputs(SMALL, 12, seed=1)
    copies = [t.clone() for t in (img, pos, prompt)]
    with torch.no_grad():
        a = ours.encoder([img], prompt, src_pos=[pos], prompt_key_padding_mask=mask,
                         feat_sizes=[(12, 12)])["memory"]
        b = ours.encoder([img], prompt, src_pos=[pos],
                         prompt_key_padding_mask=torch.zeros_like(mask),
                         feat_sizes=[(12, 12)])["memory"]
    assert all(torch.equal(t, c) for t, c in zip((img, pos, prompt), copies, strict=True))
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3  # the padded prompt's image
    assert torch.allclose(a[:, 1], b[:, 1], atol=1e-6)  # the unpadded one
    with pytest.raises(ValueError, match="expected 12x12=144 tokens"):
        ours.encoder([img[:100]], prompt, src_pos=[pos[:100]], prompt_key_padding_mask=mask,
                     feat_sizes=[(12, 12)])


def test_decoder_refuses_dac_and_memory_mask_with_box_bias():
    ours, _ = _ours(SMALL)
    dec = ours.decoder
    img, pos, prompt, mask = _inputs(SMALL, 12)
    tgt = dec.query_embed.weight[:, None].repeat(1, 2, 1)
    shapes = torch.tensor([[12, 12]])
    with pytest.raises(ValueError, match="expected apply_dac=False"):
        dec(tgt, img, pos=pos, spatial_shapes=shapes, memory_text=prompt,
            text_attention_mask=mask, apply_dac=True)
    with pytest.raises(ValueError, match="expected no memory_mask"):
        dec(tgt, img, memory_mask=torch.zeros(2 * 4, 20, 144), pos=pos, spatial_shapes=shapes,
            memory_text=prompt, text_attention_mask=mask)


def test_full_size_keys_shapes_and_dtypes_equal_official():
    theirs, their_scoring, _, _ = _official_modules(FULL)
    with torch.device("meta"):
        ours, our_scoring = _ours(FULL)

    def layout(m: nn.Module):
        return [(k, tuple(v.shape), v.dtype) for k, v in m.state_dict().items()]

    assert layout(ours) == layout(theirs)
    assert layout(our_scoring) == layout(their_scoring)
    assert {k for k, _ in ours.named_parameters()} == {k for k, _ in theirs.named_parameters()}
    assert len(layout(ours)) == 18 * 6 + 24 * 6 + 31  # encoder layers, decoder layers, heads
    assert ours.decoder.num_queries == 200 and ours.decoder.num_o2m_queries == 200


@pytest.mark.slow
def test_full_size_transformer_matches_official():
    torch.set_num_threads(2)
    _compare(FULL, hw=72, seed=7)
