"""The SAM 3 text tokenizer: CLIP's byte-level BPE, read from the official vocabulary file.

The vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, shipped beside the checkpoint, never
downloaded here) is gzip'd UTF-8 text: one header line (`#version: 0.2`), then one merge per
line, two space-separated symbols. The ids are: the 256 byte symbols, the same 256 with the
end-of-word mark `</w>`, one id per merge (the first 48894 merges of the file at most), then
`<start_of_text>` and `<end_of_text>`; with the full file that is 49408 ids, the text encoder's
vocabulary.

Encoding a text: repair it (ftfy), unescape HTML twice, collapse whitespace, lower-case; split
it into words, the contractions 's 't 're 've 'm 'll 'd, single digits and runs of other
non-space symbols; write each piece's UTF-8 bytes as printable symbols and merge them by BPE.
A batch is `<start_of_text>` + ids + `<end_of_text>`, cut to the context length (the last kept
id becomes `<end_of_text>`) and padded with 0 (which is also the id of a lone "!" symbol inside
a longer punctuation run; the text encoder's mask treats it as padding too, as the official
one does).
"""

from __future__ import annotations

import gzip
import html
import os
import zlib
from functools import lru_cache

import ftfy
import regex
import torch

START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
MAX_MERGES = 49152 - 256 - 2  # 48894: the merges CLIP's 49408 ids hold
END_OF_WORD = "</w>"
CACHE_SIZE = 65536  # distinct words whose BPE is kept; a caption corpus repeats its words
DEFAULT_CONTEXT_LENGTH = 77  # CLIP's; the SAM 3 text encoder asks for 32

_WHITESPACE = regex.compile(r"\s+")
_UNRANKED = float("inf")


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """The printable symbol that stands for each byte 0-255: the printable Latin-1 bytes
    ("!".."~", "¡".."¬", "®".."ÿ") stand for themselves, the other 68 bytes for chr(256 + k)
    in byte order. The id of a byte symbol is its position in this dict's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in table)
    for k, b in enumerate(extra):
        table[b] = chr(256 + k)
    return table


def clean_text(text: str) -> str:
    """ftfy repair, HTML unescaped twice, runs of whitespace -> one space, stripped, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def read_merges(path: str | os.PathLike, max_merges: int = MAX_MERGES) -> list[tuple[str, str]]:
    """The first `max_merges` merges of a gzip'd CLIP vocabulary file (header line skipped).
    Raises FileNotFoundError if `path` is missing, ValueError if it is not such a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected the SAM 3 BPE vocabulary file (bpe_simple_vocab_16e6"
                                f".txt.gz) at '{path}', got no file there")
    try:
        with gzip.open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"expected a gzip'd UTF-8 BPE vocabulary at '{path}', got an "
                         f"unreadable file ({e})") from e
    lines = text.split("\n")
    if "#version" not in lines[0]:
        raise ValueError(f"expected a '#version' header line in the BPE vocabulary '{path}', "
                         f"got {lines[0][:60]!r}")
    body = lines[1:1 + max_merges]
    if body and body[-1] == "" and len(lines) <= 1 + max_merges:
        body = body[:-1]  # the newline that ends the file
    merges = []
    for number, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"expected two symbols on line {number} of the BPE vocabulary "
                             f"'{path}', got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ValueError(f"expected merges in the BPE vocabulary '{path}', got none")
    return merges


class Tokenizer:
    """CLIP BPE tokenizer (the official `SimpleTokenizer`, clean="lower", no extra special
    tokens). Build it once per process: it holds the vocabulary and a cache of encoded words.

    `tokenizer(texts, context_length)` -> Nxcontext_length int64 ids (see the module doc)."""

    def __init__(self, bpe_path: str | os.PathLike,
                 context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        self.bpe_path = os.fspath(bpe_path)
        self.context_length = context_length
        merges = read_merges(self.bpe_path)
        self.byte_encoder = byte_symbols()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + END_OF_WORD for s in symbols]
        vocab += [a + b for a, b in merges] + [START_TOKEN, END_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}  # a repeated token: last id
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.byte_decoder = {s: b for b, s in self.byte_encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[START_TOKEN]
        self.eot_token_id = self.encoder[END_TOKEN]
        self._specials = {START_TOKEN, END_TOKEN}
        self._cache: dict[str, tuple[str, ...]] = {}
        self._split = regex.compile(
            f"{START_TOKEN}|{END_TOKEN}"
            r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE,
        )

    def bpe(self, word: str) -> tuple[str, ...]:
        """The BPE pieces of one word of byte symbols; the last piece ends with `</w>`."""
        if word in self._specials:
            return (word,)
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + END_OF_WORD]
        while len(parts) > 1:
            # Merge the lowest-ranked adjacent pair, every occurrence, left to right
            pairs = zip(parts[:-1], parts[1:], strict=True)
            pair = min(pairs, key=lambda p: self.bpe_ranks.get(p, _UNRANKED))
            if pair not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        pieces = tuple(parts)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = pieces
        return pieces

    def encode(self, text: str) -> list[int]:
        """The ids of one text, without start/end tokens."""
        ids = []
        for piece in self._split.findall(clean_text(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, each word followed by a space (start/end tokens spelled out)."""
        symbols = "".join(self.decoder[i] for i in ids)
        text = bytes(self.byte_decoder[c] for c in symbols).decode("utf-8", errors="replace")
        return text.replace(END_OF_WORD, " ")

    def __call__(self, texts: str | list[str],
                 context_length: int | None = None) -> torch.Tensor:
        """Texts -> Nxcontext_length int64 ids: start, ids, end, zero-padded; a text too long
        is cut to the context length with its last id replaced by the end token."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"expected a context length of at least 2, got {length}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length - 1] + [self.eot_token_id]
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
