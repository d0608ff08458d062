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
    """The end of a shard: how many samples it yielded and, if it broke off, why."""

    count: int
    error: str | None = None
    skipped_members: int = 0


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset rule: the key is the path up to the first dot of the file name."""
    d, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(d, stem), "." + ext.lower() if ext else ""


def image_id_from(key: str, meta: dict | None) -> int | None:
    """SA-1B image id from the json (`image.image_id`), else the last number in the key."""
    if meta and isinstance(meta.get("image"), dict) and "image_id" in meta["image"]:
        try:
            return int(meta["image"]["image_id"])
        except (TypeError, ValueError):
            return None
    digits = re.findall(r"\d+", posixpath.basename(key))
    return int(digits[-1]) if digits else None


def _finish(group: dict, key: str, source: str, require_json: bool) -> Sample | None:
    images = [n for n in group if n[1] in IMAGE_EXTENSIONS]
    json_member = next((n for n in group if n[1] == ".json"), None)
    if not images and json_member is None:
        return None  # not a sample (e.g. a README in the tar): counted as skipped
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
    return sample


def _tar_groups(url: str, storage_options: dict | None, failure: list,
                storage: StorageConfig | None = None) -> Iterator[tuple[str, dict]]:
    """(key, {(member name, ext): bytes}) for consecutive members sharing a key. A tar that
    breaks off (its bytes read, its structure cut or corrupt) ends the stream, the error is
    appended to `failure` and the member it hit holds it; a storage failure that outlasts the
    retries raises StorageUnavailable."""
    group: dict = {}
    key = ""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        with ResumableReader(fs, path, storage) as f:
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = _split_key(member.name)
                    if k != key and group:
                        yield key, group
                        group = {}
                    key = k
                    try:
                        group[(member.name, ext)] = tar.extractfile(member).read()
                    except (tarfile.TarError, OSError, EOFError) as e:
                        group[(member.name, ext)] = e
                        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        failure.append(e)
    if group:
        yield key, group


def iter_tar(shard: Shard, storage_options: dict | None = None,
             require_json: bool = False, storage: StorageConfig | None = None
             ) -> Iterator[Sample | ShardEnd]:
    """Stream a tar shard: one Sample per key holding an image or json, then a ShardEnd.
    Raises StorageUnavailable when the object cannot be read (see the module docstring)."""
    count = skipped = 0
    failure: list[Exception] = []
    for key, group in _tar_groups(shard.url, storage_options, failure, storage):
        sample = _finish(group, key, shard.url, require_json)
        if sample is None:
            skipped += len(group)
            continue
        count += 1
        yield sample
    error = None
    if failure:
        e = failure[0]
        error = f"shard '{shard.name}' is unreadable after {count} samples: " \
                f"{type(e).__name__}: {e}"
    yield ShardEnd(count=count, error=error, skipped_members=skipped)


def iter_folder(shard: Shard, storage_options: dict | None = None,
                storage: StorageConfig | None = None) -> Iterator[Sample | ShardEnd]:
    """A folder of images (json sidecars optional): one Sample per image file. Raises
    StorageUnavailable when a listed file cannot be read after the retries."""
    storage = storage or StorageConfig()
    fs, root = fsspec.core.url_to_fs(shard.url, **(storage_options or {}))
    files = sorted(with_retries(f"the listing of '{shard.url}'", lambda: fs.find(root), storage))
    by_key: dict[str, dict] = {}
    for path in files:
        rel = posixpath.relpath(path, root)
        k, ext = _split_key(rel)
        by_key.setdefault(k, {})[(rel, ext)] = path
    count = skipped = 0
    for k in sorted(by_key):
        group = by_key[k]
        if not any(ext in IMAGE_EXTENSIONS for _, ext in group):
            skipped += len(group)
            continue
        loaded = {(rel, ext): with_retries(f"'{path}'", lambda p=path: fs.cat_file(p), storage)
                  for (rel, ext), path in group.items()}
        sample = _finish(loaded, k, shard.url, require_json=False)
        count += 1
        yield sample
    yield ShardEnd(count=count, skipped_members=skipped)


def iter_shard(shard: Shard, storage_options: dict | None = None,
               fmt: str = "auto", storage: StorageConfig | None = None
               ) -> Iterator[Sample | ShardEnd]:
    """Samples of any shard, then its ShardEnd. fmt: auto|sa1b|webdataset|folder
    (auto: folders -> folder, `sa_*.tar` -> sa1b (json required), other tars -> webdataset).
    storage: the retry settings (defaults when None). Raises StorageUnavailable when the
    shard cannot be read (see the module docstring)."""
    if shard.container == "folder":
        return iter_folder(shard, storage_options, storage)
    require_json = fmt == "sa1b" or (fmt == "auto" and shard.name.startswith("sa_"))
    return iter_tar(shard, storage_options, require_json=require_json, storage=storage)
