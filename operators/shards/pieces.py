"""Cutting shards into pieces of about `input.images_per_task` samples, so that any number of
read tasks can read one shard (an SA-1B shard holds ~11k images: one task per shard reads at
one core's pace).

The planning task of a shard (`plan_pieces`, a Ray task per shard to do) walks its tar
headers (index.scan_tar) or lists its folder, groups members into samples by the reader's own
rule (read.starts_group), and cuts between samples once a piece holds images_per_task of them.
Each piece carries what the reader would have known had it read the shard from its start: the
samples before it, how often each of its keys was already seen (KEY~n across the whole shard),
and where the earlier members its hard links name are. A shard of at most images_per_task
samples stays one piece (the item unchanged), and so does a compressed tar.

What a piece's read yields equals that part of the one-task read: the same keys, bytes,
`members` counts (summed over the pieces) and, in the last piece (which reads to the end of
the object), the same break of a cut or corrupt tar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import InputConfig, StorageConfig
from .index import Member, object_size, scan_tar
from .listing import IMAGE_EXTENSIONS
from .piece import Piece
from .read import (
    DUPLICATE_SEPARATOR,
    folder_groups,
    is_sample,
    printable_name,
    split_key,
    starts_group,
)
from .resumable import StorageUnavailable
from .schema import item_shard, shard_item

HEADER = 512  # bytes of a tar header: no sample takes fewer
log = logging.getLogger(__name__)


@dataclass
class _Group:
    """A run of members forming one sample (or a non-sample group) in a tar."""

    start: int  # header offset of its first member
    key: str
    exts: list[str] = field(default_factory=list)
    names: set = field(default_factory=set)
    links: dict[str, list[int]] = field(default_factory=dict)  # linkname -> [data, size]


def _tar_groups(members: list[Member]) -> list[_Group]:
    """The members' sample groups in tar order, as read._tar_groups forms them (special
    members and dangling links belong to no group)."""
    groups: list[_Group] = []
    files: dict[str, list[int]] = {}
    current: _Group | None = None
    for m in members:
        target = None
        if m.kind == "link":
            target = files.get(m.linkname)
            if target is None:
                continue  # dangling: counted by the reader, no group
        elif m.kind != "file":
            continue
        k, ext = split_key(m.name)
        entry = (m.name, ext)
        if current is None or starts_group(current.key, current.names, k, entry):
            current = _Group(start=m.header, key=k)
            groups.append(current)
        current.key = k
        current.names.add(entry)
        current.exts.append(ext)
        if target is not None:
            current.links[m.linkname] = target
        else:
            files[m.name] = [m.data, m.size]
    return groups


def _final_keys(groups: list[_Group]) -> list[tuple[str | None, int]]:
    """Per group: its sample key as the reader names it (KEY~n for the n-th sample of a key)
    or None for a non-sample group, and how many samples of that key came before it."""
    seen: dict[str, int] = {}
    out: list[tuple[str | None, int]] = []
    for g in groups:
        if not is_sample(g.exts):
            out.append((None, 0))
            continue
        key = printable_name(g.key)[0]
        before = seen.get(key, 0)
        seen[key] = before + 1
        out.append((key if not before else f"{key}{DUPLICATE_SEPARATOR}{before + 1}", before))
    return out


def cut_tar(members: list[Member], images_per_task: int, skip_keys: list[str] | None = None
            ) -> list[tuple[Piece, list[str]]]:
    """A tar's members (index.scan_tar) -> its pieces of about `images_per_task` samples, each
    with the keys of `skip_keys` that are its own (the last piece also takes those no piece
    names: samples past a break the header pass stopped at). One piece when the tar holds no
    more than images_per_task samples."""
    groups = _tar_groups(members)
    keys = _final_keys(groups)
    cuts = [0]  # group indices where pieces start
    n = 0
    for i, (key, _) in enumerate(keys):
        if n >= images_per_task:
            cuts.append(i)
            n = 0
        n += key is not None
    if len(cuts) == 1:
        return [(Piece(), list(skip_keys or ()))]
    skip = set(skip_keys or ())
    pieces: list[tuple[Piece, list[str]]] = []
    samples_before = 0
    for p, first in enumerate(cuts):
        last = cuts[p + 1] if p + 1 < len(cuts) else len(groups)
        start = 0 if p == 0 else groups[first].start
        end = groups[last].start if last < len(groups) else None
        seen: dict[str, int] = {}
        links: dict[str, list[int]] = {}
        mine: list[str] = []
        for g, (key, before) in zip(groups[first:last], keys[first:last], strict=True):
            if key is not None:
                base = printable_name(g.key)[0]
                if before and base not in seen:
                    seen[base] = before
                if key in skip:
                    mine.append(key)
            links.update({n: t for n, t in g.links.items() if t[0] < start})
        count = sum(k is not None for k, _ in keys[first:last])
        pieces.append((Piece(index=p, pieces=len(cuts), start=start, end=end,
                             first_sample=samples_before, seen=seen, links=links), mine))
        samples_before += count
    named = {k for _, mine in pieces for k in mine}
    pieces[-1][1].extend(sorted(skip - named))
    return pieces


def cut_folder(by_key: dict[str, dict[tuple[str, str], str]], images_per_task: int,
               skip_keys: list[str] | None = None) -> list[tuple[Piece, list[str]]]:
    """A folder's files by key (read.folder_groups) -> its pieces of about images_per_task
    images, each a list of files (keys in sorted order, as the reader takes them)."""
    ordered = sorted(by_key)
    cuts = [0]
    n = 0
    for i, k in enumerate(ordered):
        if n >= images_per_task:
            cuts.append(i)
            n = 0
        n += any(ext in IMAGE_EXTENSIONS for _, ext in by_key[k])
    if len(cuts) == 1:
        return [(Piece(), list(skip_keys or ()))]
    skip = set(skip_keys or ())
    pieces = []
    before = 0
    for p, first in enumerate(cuts):
        chunk = ordered[first : cuts[p + 1] if p + 1 < len(cuts) else len(ordered)]
        files = [rel for k in chunk for rel, _ in by_key[k]]
        mine = [printable_name(k)[0] for k in chunk if printable_name(k)[0] in skip]
        pieces.append((Piece(index=p, pieces=len(cuts), first_sample=before, files=files), mine))
        before += sum(any(e in IMAGE_EXTENSIONS for _, e in by_key[k]) for k in chunk)
    return pieces


def plan_pieces(item: dict[str, Any], input_cfg: InputConfig,
                storage_options: dict | None = None, storage: StorageConfig | None = None
                ) -> list[dict[str, Any]]:
    """The shard item of one shard -> the shard items of its pieces (input.images_per_task
    samples each; the item itself when the shard is one piece). A shard whose headers cannot
    be read is one item whose piece says why (`unavailable`): its read reports it and the
    driver leaves the shard uncommitted, as for a shard whose bytes cannot be read."""
    storage = storage or StorageConfig()
    shard = item_shard(item)
    skip = item.get("skip_keys") or []
    per_task = input_cfg.images_per_task
    try:
        if shard.container == "folder":
            pieces = cut_folder(folder_groups(shard, storage_options, storage), per_task, skip)
        else:
            size = object_size(shard.url, storage_options, storage)
            if size // HEADER <= per_task:  # cannot hold more samples than one piece takes
                return [item]
            index = scan_tar(shard.url, storage_options, storage, size=size)
            if index.compressed:
                return [item]
            pieces = cut_tar(index.members, per_task, skip)
    except StorageUnavailable as e:
        return [{**item, "piece": Piece(unavailable=str(e)).as_item()}]
    except Exception as e:  # noqa: BLE001 - a shard the pass cannot cut is read whole, where
        #   the reader isolates its trouble as it does for any shard (one shard never stops a job)
        log.warning("shard %s: cannot cut it into pieces (%s: %s); reading it in one task",
                    shard.name, type(e).__name__, e)
        return [item]
    if len(pieces) == 1:
        return [item]
    return [shard_item(shard, skip_keys=keys, piece=piece.as_item()) for piece, keys in pieces]
