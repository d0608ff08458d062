"""A small BPE vocabulary of our own in the official SAM 3 / CLIP file format, for the
tokenizer and text encoder tests (the official `bpe_simple_vocab_16e6.txt.gz` is not in CI).

`write_vocab(path)` learns merges from PHRASES the way BPE is trained (words as byte symbols
with `</w>` on the last, repeatedly merge the most frequent adjacent pair) and writes them
gzip'd, after a header line like the official file's. The file does not end with a newline:
the official reader would turn a final empty line into a merge of its own (the official file
has far more lines than it reads, so it never meets one).
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import regex

from models.sam3.tokenizer import byte_symbols, clean_text

HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2'  # the official file's first line, as it is

PHRASES = [
    "a photo of a cat", "the dog on the sofa", "a red car parked on the street",
    "people walking in the park", "two yellow bananas", "traffic light", "striped shirt",
    "the person wearing a hat", "a bottle of water", "cars and trucks on the highway",
    "an orange cat sleeping", "the wheels of the bicycle", "birds flying over the sea",
    "a stop sign", "green leaves", "brown wooden chairs", "the players on the field",
    "café crème brûlée", "naïve résumé", "señor jalapeño", "straße", "日本語のテキスト",
    "猫と犬", "emoji 🐱 and 🐶", "it's the dog's toy", "they're walking", "we've got 12 cats",
    "1984 and 2024", "hello, world!", "don't stop", "rock & roll", "«quoted» text",
    "a kitten playing with yarn", "horses grazing in a meadow", "skateboarder jumping",
    "umbrella in the rain", "elephants at the waterhole", "a plate of spaghetti",
    "mountains covered with snow", "the lighthouse", "ein Hund läuft", "Ölgemälde",
    "электрический самокат", "ψάρι", "!!! ??? ... ---",
]


def _words(phrases: list[str]) -> Counter:
    """Each word of the cleaned phrases, as a tuple of byte symbols ending in `</w>`."""
    symbols = byte_symbols()
    pattern = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    words: Counter = Counter()
    for phrase in phrases:
        for piece in pattern.findall(clean_text(phrase)):
            chars = [symbols[b] for b in piece.encode("utf-8")]
            words[tuple(chars[:-1]) + (chars[-1] + "</w>",)] += 1
    return words


def learn_merges(phrases: list[str], count: int) -> list[tuple[str, str]]:
    """Up to `count` BPE merges, most frequent pair first (ties: the first pair seen)."""
    words = _words(phrases)
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter = Counter()
        for word, n in words.items():
            for pair in zip(word[:-1], word[1:], strict=True):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=pairs.__getitem__)
        merges.append(best)
        merged: Counter = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def write_vocab(path: Path, count: int = 300, phrases: list[str] | None = None) -> Path:
    """A gzip'd vocabulary file of `count` merges learned from `phrases` (PHRASES) at `path`."""
    merges = learn_merges(PHRASES if phrases is None else phrases, count)
    text = "\n".join([HEADER] + [f"{a} {b}" for a, b in merges])
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path
