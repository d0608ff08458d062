"""Reading shards into samples: tar members grouped by key, or the files of an image folder.

Nothing is dropped silently: every image member (and every SA-1B json without its image)
becomes one sample, with `error` set when it cannot be used; a shard whose bytes were all read
but that breaks off (a truncated or corrupt tar) yields what it held and then reports the
break. Storage faults are not breaks: the byte stream re-opens at its offset
(resumable.ResumableReader), and a shard that still cannot be read raises StorageUnavailable,
so that it is never committed as if it were truncated.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

from ..config import StorageConfig
from .listing import IMAGE_EXTENSIONS, Shard
from .piece import Piece
from .resumable import ResumableReader, with_retries


@dataclass
class Sample:
    """One image of a shard, before decoding.

    key: member path without extension (WebDataset key); image: encoded bytes or None;
    meta: the parsed json sidecar or None; error: why the sample cannot be used, or None."""

    key: str
    source_uri: str
    image: bytes | None = None
    image_name: str | None = None
    meta: dict | None = None
    error: str | None = None
    extra: list[str] = field(default_factory=list)


@dataclass
class ShardEnd:
    """The end of a shard: how many samples it yielded and, if it broke off, why.
    skipped_members: members that became no sample; members: counts by kind of what the reader
    saw besides plain samples (MEMBER_KINDS), for the shard's stats."""

    count: int
    error: str | None = None
    skipped_members: int = 0
    members: dict[str, int] = field(default_factory=dict)


# What a shard's stats count besides its samples (ShardEnd.members); every kind but
# "hardlink" (read as the member it links to) and "duplicate_key" (kept under a suffixed key)
# and "extra_image" (a second image of one key, e.g. x.jpg beside x.png) is no sample
MEMBER_KINDS = {
    "not_a_sample": "members whose key has neither an image nor a json (a README, a .txt)",
    "symlink": "symbolic links (never followed: they may point outside the shard)",
    "hardlink": "hard links to an earlier member, read as that member",
    "dangling_hardlink": "hard links to no earlier member of the shard",
    "compressed_hardlink": "hard links inside a compressed tar (not read: no ranged reads)",
    "fifo": "named pipes", "device": "character or block devices",
    "directory": "directory entries", "other": "other special members",
    "duplicate_key": "samples whose key an earlier sample of the shard had (kept as KEY~N)",
    "extra_image": "second images of one key (only the first is the sample's image)",
    "non_utf8_name": "members whose name is not UTF-8 (an error row, name escaped)",
}
# special members that are no sample (counted in skipped_members too)
NOT_SAMPLES = ("symlink", "dangling_hardlink", "compressed_hardlink", "fifo", "device",
               "directory", "other")
DUPLICATE_SEPARATOR = "~"  # the n-th sample of a repeated key is KEY~n (n >= 2)


def _count(counts: dict[str, int], kind: str, n: int = 1) -> None:
    counts[kind] = counts.get(kind, 0) + n


def printable_name(name: str) -> tuple[str, bool]:
    """A member or file name as valid text, and whether it had to be escaped: names that are
    not UTF-8 (decoded with surrogate escapes by tarfile and os) keep their bytes as \\xNN."""
    try:
        name.encode("utf-8")
        return name, False
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace"), True


def special_kind(member: tarfile.TarInfo) -> str:
    """The MEMBER_KINDS name of a member that is neither a file nor a hard link."""
    if member.issym():
        return "symlink"
    if member.isfifo():
        return "fifo"
    if member.ischr() or member.isblk():
        return "device"
    if member.isdir():
        return "directory"
    return "other"


def split_key(name: str) -> tuple[str, str]:
    """WebDataset rule: the key is the path up to the first dot of the file name."""
    d, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(d, stem), "." + ext.lower() if ext else ""


def starts_group(key: str, group: dict | set, k: str, entry: tuple[str, str]) -> bool:
    """Whether member `entry` (name, ext) of key `k` starts a new sample after the current
    group (`key`, its entries): a new key, or a member name repeated inside one key's run.
    The reader and the header pass (pieces.py) group by this one rule."""
    return bool(group) and (k != key or entry in group)


def is_sample(exts: list[str]) -> bool:
    """Whether a group with members of these extensions is a sample (an image or a json)."""
    return any(e in IMAGE_EXTENSIONS or e == ".json" for e in exts)


def image_id_from(key: str, meta: dict | None) -> int | None:
    """SA-1B image id from the json (`image.image_id`), else the last number in the key."""
    if meta and isinstance(meta.get("image"), dict) and "image_id" in meta["image"]:
        try:
            return int(meta["image"]["image_id"])
        except (TypeError, ValueError):
            return None
    digits = re.findall(r"\d+", posixpath.basename(key))
    return int(digits[-1]) if digits else None


def _finish(group: dict, key: str, source: str, require_json: bool,
            counts: dict[str, int] | None = None) -> Sample | None:
    images = [n for n in group if n[1] in IMAGE_EXTENSIONS]
    json_member = next((n for n in group if n[1] == ".json"), None)
    if not images and json_member is None:
        return None  # not a sample (e.g. a README in the tar): counted as skipped
    if counts is not None and len(images) > 1:
        _count(counts, "extra_image", len(images) - 1)
    key, escaped = printable_name(key)
    sample = Sample(key=key, source_uri=f"{source}#{key}")
    if images:
        name, _ = images[0]
        sample.image_name = name
        sample.image = group[images[0]]
        sample.extra = [n for n, _ in images[1:]]
    else:
        sample.error = f"no image member for key '{key}' (only {json_member[0]})"
    if json_member is not None:
        raw = group[json_member]
        if isinstance(raw, Exception):
            raw = b"<unreadable: %s>" % str(raw).encode()
        try:
            sample.meta = json.loads(raw)
            if not isinstance(sample.meta, dict):
                raise ValueError(f"expected a JSON object, got {type(sample.meta).__name__}")
        except ValueError as e:
            sample.meta = None
            sample.error = sample.error or f"malformed json {json_member[0]}: {e}"
    elif require_json and sample.error is None:
        sample.error = f"missing json for '{key}' (SA-1B samples carry sa_<id>.json)"
    if isinstance(sample.image, Exception):
        sample.error = f"cannot read member {sample.image_name}: {sample.image}"
        sample.image = None
    if escaped:
        sample.image_name = printable_name(sample.image_name or key)[0]
        sample.error = (f"member name is not UTF-8 (its bytes kept escaped in the key "
                        f"'{key}')")
        sample.image = None
        if counts is not None:
            _count(counts, "non_utf8_name")
    return sample


def _tar_groups(url: str, storage_options: dict | None, failure: list,
                storage: StorageConfig | None = None, counts: dict[str, int] | None = None,
                piece: Piece | None = None) -> Iterator[tuple[str, dict]]:
    """(key, {(member name, ext): bytes}) for consecutive members sharing a key (a member
    name repeated inside a run of one key starts a new group). A tar that breaks off (its
    bytes read, its structure cut or corrupt) ends the stream, the error is appended to
    `failure` and the member it hit holds it; a storage failure that outlasts the retries
    raises StorageUnavailable. Special members are counted by kind in `counts`; a hard link
    to an earlier member is read as that member (a ranged read of its bytes). piece: read only
    its byte range, its links to members before it resolved by the header pass."""
    counts = {} if counts is None else counts
    storage = storage or StorageConfig()
    piece = piece or Piece()
    group: dict = {}
    key = ""
    # member name -> (data offset, size), for links (those before the piece: from the index)
    files: dict[str, tuple[int, int]] = {n: (int(a), int(b)) for n, (a, b) in piece.links.items()}
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        with ResumableReader(fs, path, storage, start=piece.start, end=piece.end) as f:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if member.islnk():
                        target = files.get(member.linkname)
                        if getattr(tar.fileobj, "comptype", "tar") != "tar":
                            _count(counts, "compressed_hardlink")
                            continue
                        if target is None:
                            _count(counts, "dangling_hardlink")
                            continue
                        _count(counts, "hardlink")
                        start, size = target
                        data = with_retries(
                            f"'{url}' bytes {start}..{start + size} (hard link "
                            f"'{printable_name(member.name)[0]}')",
                            lambda s=start, n=size: fs.cat_file(path, start=s, end=s + n),
                            storage)
                    elif not member.isfile():
                        _count(counts, special_kind(member))
                        continue
                    else:
                        data = None
                    k, ext = split_key(member.name)
                    if starts_group(key, group, k, (member.name, ext)):
                        yield key, group
                        group = {}
                    key = k
                    if data is not None:
                        group[(member.name, ext)] = data
                        continue
                    files[member.name] = (piece.start + member.offset_data, member.size)
                    try:
                        group[(member.name, ext)] = tar.extractfile(member).read()
                    except (tarfile.TarError, OSError, EOFError) as e:
                        group[(member.name, ext)] = e
                        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        failure.append(e)
    if group:
        yield key, group


def _dedup(sample: Sample, seen: dict[str, int], counts: dict[str, int]) -> Sample:
    """The n-th sample of a key already seen in this shard is kept as KEY~n (counted)."""
    n = seen.get(sample.key, 0) + 1
    seen[sample.key] = n
    if n > 1:
        _count(counts, "duplicate_key")
        sample.key = f"{sample.key}{DUPLICATE_SEPARATOR}{n}"
        sample.source_uri = f"{sample.source_uri}{DUPLICATE_SEPARATOR}{n}"
    return sample


def iter_tar(shard: Shard, storage_options: dict | None = None,
             require_json: bool = False, storage: StorageConfig | None = None,
             piece: Piece | None = None) -> Iterator[Sample | ShardEnd]:
    """Stream a tar shard (or one piece of it): one Sample per key holding an image or json,
    then a ShardEnd (of the piece: its samples and members). Raises StorageUnavailable when
    the object cannot be read (see the module docstring)."""
    piece = piece or Piece()
    count = skipped = 0
    failure: list[Exception] = []
    counts: dict[str, int] = {}
    seen: dict[str, int] = dict(piece.seen)  # keys' samples before the piece (KEY~n)
    for key, group in _tar_groups(shard.url, storage_options, failure, storage, counts,
                                  piece):
        sample = _finish(group, key, shard.url, require_json, counts)
        if sample is None:
            skipped += len(group)
            _count(counts, "not_a_sample", len(group))
            continue
        count += 1
        yield _dedup(sample, seen, counts)
    error = None
    if failure:
        e = failure[0]
        error = f"shard '{shard.name}' is unreadable after {piece.first_sample + count} " \
                f"samples: " \
                f"{type(e).__name__}: {e}"
    skipped += sum(counts.get(k, 0) for k in NOT_SAMPLES)
    yield ShardEnd(count=count, error=error, skipped_members=skipped, members=counts)


def folder_groups(shard: Shard, storage_options: dict | None = None,
                  storage: StorageConfig | None = None, files: list[str] | None = None
                  ) -> dict[str, dict[tuple[str, str], str]]:
    """The files of a folder shard by key: {key: {(relative path, ext): path}}, from its
    listing, or from `files` (relative paths, a piece's) without listing it."""
    storage = storage or StorageConfig()
    fs, root = fsspec.core.url_to_fs(shard.url, **(storage_options or {}))
    if files is None:
        paths = sorted(with_retries(f"the listing of '{shard.url}'", lambda: fs.find(root),
                                    storage))
    else:
        paths = [posixpath.join(root, rel) for rel in files]
    by_key: dict[str, dict] = {}
    for path in paths:
        rel = posixpath.relpath(path, root)
        k, ext = split_key(rel)
        by_key.setdefault(k, {})[(rel, ext)] = path
    return by_key


def iter_folder(shard: Shard, storage_options: dict | None = None,
                storage: StorageConfig | None = None, piece: Piece | None = None
                ) -> Iterator[Sample | ShardEnd]:
    """A folder of images (json sidecars optional): one Sample per image file (a piece: of
    its files only). Raises StorageUnavailable when a listed file cannot be read after the
    retries."""
    storage = storage or StorageConfig()
    fs, _ = fsspec.core.url_to_fs(shard.url, **(storage_options or {}))
    by_key = folder_groups(shard, storage_options, storage,
                           None if piece is None else piece.files)
    count = skipped = 0
    counts: dict[str, int] = {}
    for k in sorted(by_key):
        group = by_key[k]
        if not any(ext in IMAGE_EXTENSIONS for _, ext in group):
            skipped += len(group)
            _count(counts, "not_a_sample", len(group))
            continue
        loaded = {(rel, ext): with_retries(f"'{printable_name(path)[0]}'",
                                           lambda p=path: fs.cat_file(p), storage)
                  for (rel, ext), path in group.items()}
        sample = _finish(loaded, k, shard.url, require_json=False, counts=counts)
        count += 1
        yield sample
    yield ShardEnd(count=count, skipped_members=skipped, members=counts)


def iter_shard(shard: Shard, storage_options: dict | None = None,
               fmt: str = "auto", storage: StorageConfig | None = None,
               piece: Piece | None = None) -> Iterator[Sample | ShardEnd]:
    """Samples of any shard, then its ShardEnd. fmt: auto|sa1b|webdataset|folder
    (auto: folders -> folder, `sa_*.tar` -> sa1b (json required), other tars -> webdataset).
    storage: the retry settings (defaults when None). piece: one piece of the shard
    (pieces.py; None: the whole shard). Raises StorageUnavailable when the shard cannot be
    read (see the module docstring)."""
    if shard.container == "folder":
        return iter_folder(shard, storage_options, storage, piece)
    require_json = fmt == "sa1b" or (fmt == "auto" and shard.name.startswith("sa_"))
    return iter_tar(shard, storage_options, require_json=require_json, storage=storage,
                    piece=piece)
