"""Our SAM 3 tokenizer and text encoder (models/sam3/tokenizer.py, text.py) against the
official ones (PyPI `sam3==0.1.4`: `SimpleTokenizer`, `VETextEncoder`, and the backbone's
`forward_text`), on the same vocabulary file and the same seeded random weights.

Token ids must be equal; encoder outputs to 1e-4 relative (max abs difference over max abs
value), masks equal. The vocabulary is our own small one (tests/sam3_vocab.py) except in the
test that reads the official file at /tmp/bpe_simple_vocab_16e6.txt.gz, skipped without it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from models.sam3.text import TextEncoder
from models.sam3.tokenizer import Tokenizer
from tests.models.common import max_rel
from tests.sam3_vocab import write_vocab

pytestmark = [pytest.mark.filterwarnings("ignore:CUDA is not available"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")]

REAL_VOCAB = Path("/tmp/bpe_simple_vocab_16e6.txt.gz")

PHRASES = [
    "a photo of a cat", "A Photo Of A CAT", "the dog's ball", "DON'T STOP", "we'll go, they'd say",
    "Hello, World!!!", "1234567890 cats", "3.14159", "rock &amp; roll", "&amp;amp; twice",
    "&amp;amp;amp; thrice", "<b>&amp;amp;</b> tagged",
    "&lt;b&gt;bold&lt;/b&gt; &quot;x&quot; &#39;y&#39;", "café crème", "cafe\u0301 decomposed",
    "naïve RÉSUMÉ", "STRASSE straße", "日本語のテキスト", "猫と犬が遊ぶ", "emoji 🐱🐶 and 👍🏽",
    "\u201ccurly\u201d \u2018quotes\u2019 \u2014 dash\u2026", "cafÃ© mojibake",
    "  extra   spaces\t\tand\nnewlines  ", "nbsp\u00a0and\u3000ideographic", "<end_of_text> inside",
    "<START_OF_TEXT>", "", "   ", "!!", "?!?!", "x" * 200, " ".join(["word"] * 100),
    "zebra quokka xylophone",  # words the small vocabulary never saw
]
PROMPTS = ["cat", "the person wearing a striped shirt, holding an umbrella",
           "ein Hund läuft über eine Wiese mit gelben Blumen neben einem sehr alten Leuchtturm "
           "am Meer, 日本語のテキスト 🐱 and 1984 more words to go past the context"]
SMALL = dict(d_model=32, width=64, heads=4, layers=2)
FULL = dict(d_model=256, width=1024, heads=16, layers=24)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("sam3_vocab") / "bpe_small.txt.gz")


def _official(module: str):
    from tests.golden.make_sam3_official import official

    try:
        return official(module)
    except ImportError as e:  # pragma: no cover - only without the package
        pytest.skip(f"official sam3 not installed: {e}")


def _official_tokenizer(path: Path):
    return _official("sam3.model.tokenizer_ve").SimpleTokenizer(bpe_path=str(path))


def _assert_same_ids(path: Path) -> None:
    ours, theirs = Tokenizer(path), _official_tokenizer(path)
    assert ours.vocab_size == theirs.vocab_size
    assert (ours.sot_token_id, ours.eot_token_id) == (theirs.sot_token_id, theirs.eot_token_id)
    for phrase in PHRASES:
        assert ours.encode(phrase) == theirs.encode(phrase), phrase
    for length in (None, 77, 32, 8, 2):
        ids = ours(PHRASES, context_length=length)
        assert ids.dtype == torch.long and ids.shape == (len(PHRASES), length or 77)
        assert torch.equal(ids, theirs(PHRASES, context_length=length)), length
    assert torch.equal(ours("a cat"), theirs("a cat"))


# Tokenizer


def test_token_ids_equal_the_official_on_our_vocabulary(vocab):
    _assert_same_ids(vocab)
    tokenizer = Tokenizer(vocab)
    assert tokenizer.vocab_size == 512 + 300 + 2
    # some words are whole tokens, unseen ones split into several pieces
    assert len(tokenizer.encode("the")) == 1 and len(tokenizer.encode("quokka")) > 2
    ids = tokenizer([" ".join(["word"] * 100)], context_length=32)[0]
    assert ids[0] == tokenizer.sot_token_id and ids[-1] == tokenizer.eot_token_id
    assert tokenizer.decode(tokenizer.encode("Café, 日本 🐱!")) == "café , 日本 🐱! "


@pytest.mark.skipif(not REAL_VOCAB.exists(), reason=f"no official vocabulary at {REAL_VOCAB}")
def test_token_ids_equal_the_official_on_the_official_vocabulary():
    _assert_same_ids(REAL_VOCAB)
    tokenizer = Tokenizer(REAL_VOCAB)
    assert tokenizer.vocab_size == 49408
    assert tokenizer(["a photo of a cat"])[0, :7].tolist() == [
        49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's well-known ids


def test_vocabulary_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        Tokenizer(missing)
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("#version: 0.2\ni n\n")
    with pytest.raises(ValueError, match="plain.txt.gz.*unreadable"):
        Tokenizer(plain)
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h\n" * 50)[:40])
    with pytest.raises(ValueError, match="cut.txt.gz"):
        Tokenizer(cut)
    headless = tmp_path / "headless.txt.gz"
    headless.write_bytes(gzip.compress(b"i n\nt h"))
    with pytest.raises(ValueError, match="expected a '#version' header.*headless"):
        Tokenizer(headless)
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress(b"#version: 0.2\ni n\nt h e\na n"))
    with pytest.raises(ValueError, match="expected two symbols on line 3.*bad.txt.gz"):
        Tokenizer(bad)
    with pytest.raises(ValueError, match="context length of at least 2, got 1"):
        Tokenizer(write_vocab(tmp_path / "ok.txt.gz", count=10))(["a"], context_length=1)


# Text encoder


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Seeded random weights: LayerNorm weights near 1, everything else N(0, 0.05)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_norm_weight = ".ln_" in name and name.endswith("weight")
            param.copy_(1 + 0.1 * noise if is_norm_weight else 0.05 * noise)


def _official_pair(tokenizer_path: Path, sizes: dict, seed: int, full_size: bool = False):
    """(official VETextEncoder with seeded weights, ours with its state dict), both eval."""
    from tests.golden.make_sam3_official import cpu_only

    with cpu_only():
        if full_size:
            theirs = _official("sam3.model_builder")._create_text_encoder(
                str(tokenizer_path))
        else:
            theirs = _official("sam3.model.text_encoder_ve").VETextEncoder(
                tokenizer=_official_tokenizer(tokenizer_path), **sizes)
    theirs.eval()
    _randomise(theirs, seed)
    ours = TextEncoder(Tokenizer(tokenizer_path), **sizes).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours



def _assert_parity(theirs, ours, width: int, d_model: int) -> None:
    from tests.golden.make_sam3_official import cpu_only

    backbone = _official("sam3.model.vl_combiner").SAM3VLBackbone(visual=None, text=theirs)
    with torch.inference_mode(), cpu_only():
        expected = theirs(PROMPTS, device="cpu")
        expected_dict = backbone.forward_text(PROMPTS[:2], additional_text=PROMPTS[2:],
                                              device="cpu")
    with torch.inference_mode():
        got = ours(PROMPTS)
        got_dict = ours.forward_text(PROMPTS[:2], additional_text=PROMPTS[2:])
        again = ours.forward_tokens(ours.tokenize(PROMPTS))  # tokenized once, beforehand
    mask, features, embeds = got
    assert mask.dtype == torch.bool and mask.shape == (3, 32)
    assert features.shape == (32, 3, d_model) and embeds.shape == (32, 3, width)
    lengths = (~mask).sum(1).tolist()
    assert lengths[0] < lengths[1] < lengths[2] == 32  # three lengths, the last one cut
    assert torch.equal(mask, expected[0])
    for ours_out, official_out in zip(got[1:], expected[1:], strict=True):
        assert official_out.shape == ours_out.shape
        assert max_rel(ours_out, official_out) <= 1e-4
    for ours_out, again_out in zip(got, again, strict=True):
        assert torch.equal(ours_out, again_out)
    # Outputs that can tell a wrong model: spread, different per prompt and per position
    assert features.std() > 0.05 * features.abs().max()
    assert max_rel(features[:, 0], features[:, 1]) > 0.1 and max_rel(features[0], features[1]) > 0.1
    assert sorted(got_dict) == sorted(expected_dict)
    for key, value in expected_dict.items():
        assert got_dict[key].shape == value.shape and got_dict[key].dtype == value.dtype, key
        if value.dtype == torch.bool:
            assert torch.equal(got_dict[key], value), key
        else:
            assert max_rel(got_dict[key], value) <= 1e-4, key


def test_text_encoder_matches_the_official_small(vocab):
    torch.manual_seed(0)
    theirs, ours = _official_pair(vocab, SMALL, seed=1)
    _assert_parity(theirs, ours, SMALL["width"], SMALL["d_model"])


def test_text_encoder_is_causal_and_checks_its_inputs(vocab):
    ours = TextEncoder(Tokenizer(vocab), **SMALL).eval()
    _randomise(ours, 2)
    tokens = ours.tokenize(["a red car", "a red bus parked on the street"])
    with torch.inference_mode():
        _, features, _ = ours.forward_tokens(tokens)
    same = int((tokens[0] != tokens[1]).int().argmax())  # ids agree before: <start> a red
    assert same >= 3 and torch.allclose(features[:same, 0], features[:same, 1], atol=1e-6)
    assert not torch.allclose(features[same, 0], features[same, 1], atol=1e-3)
    with pytest.raises(ValueError, match="at most 32 tokens, got 33"):
        ours.encoder(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 100 ids"):
        TextEncoder(Tokenizer(vocab), vocab_size=100, **SMALL)
    with pytest.raises(TypeError, match="expected a list of strings"):
        ours("a cat")


def test_full_size_state_dict_equals_the_official(vocab):
    from tests.golden.make_sam3_official import cpu_only

    with torch.device("meta"), cpu_only():
        theirs = _official("sam3.model_builder")._create_text_encoder(str(vocab))
        ours = TextEncoder(Tokenizer(vocab), **FULL)
    official_keys = [(k, v.shape, v.dtype) for k, v in theirs.state_dict().items()]
    assert [(k, v.shape, v.dtype) for k, v in ours.state_dict().items()] == official_keys
    assert len(official_keys) == 5 + 24 * 12 + 2  # encoder, blocks, resizer
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.slow
def test_text_encoder_matches_the_official_full_size(vocab):
    torch.manual_seed(0)
    path = REAL_VOCAB if REAL_VOCAB.exists() else vocab
    theirs, ours = _official_pair(path, FULL, seed=3, full_size=True)
    _assert_parity(theirs, ours, FULL["width"], FULL["d_model"])
