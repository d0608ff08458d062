"""One piece of a shard: what a read task needs to read part of a shard as if it had read all
of it before (pieces.py cuts shards into pieces; read.py reads one).

The shard stays the unit of commit and resume; the piece is the unit of parallel reading. A
tar piece is a byte range that starts at a member header and holds whole samples; a folder
piece is a list of files. Each piece ends with its own end row (`piece` = its index); the
driver commits a shard once the end rows of all its `pieces` have come and its rows add up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Piece:
    """index, pieces: this piece's number and the shard's piece count (0 of 1: the whole
    shard). start, end: its byte range in a tar (end None: to the end of the object).
    first_sample: the shard's samples before it (error messages count from the shard's
    start). seen: keys of its samples that earlier pieces had, with how many times (so that a
    repeated key is KEY~n in tar order across the shard). links: {member name: [data offset,
    size]} of earlier members that its hard links point to. files: a folder piece's relative
    paths (None: the folder's listing). unavailable: why the header pass could not read the
    shard (the read task then only reports it)."""

    index: int = 0
    pieces: int = 1
    start: int = 0
    end: int | None = None
    first_sample: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    links: dict[str, list[int]] = field(default_factory=dict)
    files: list[str] | None = None
    unavailable: str = ""

    def as_item(self) -> dict[str, Any]:
        """The piece as the shard item's "piece" field (plain values for Ray)."""
        return asdict(self)

    @classmethod
    def of_item(cls, item: dict[str, Any]) -> Piece:
        """The piece of a shard item (the whole shard when it has none)."""
        value = item.get("piece")
        return cls(**value) if value else cls()
