"""Finding shards: a URL, glob or list of them, optional name range and limit.

A shard is a tar file (SA-1B `sa_NNNNNN.tar` or any WebDataset tar) or a folder of images; it
is the unit of work, of failure and of resume, and its name keys the output.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

import fsspec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Shard:
    """name: output key (file stem, e.g. "sa_000001"); url: full fsspec URL; container:
    "tar" or "folder"."""

    name: str
    url: str
    container: str

    @classmethod
    def from_url(cls, name: str, url: str) -> Shard:
        """The shard of a dataset row's source: a tar when the URL ends in .tar, else a folder."""
        return cls(name=name, url=url, container="tar" if url.endswith(".tar") else "folder")


def _shard_name(path: str) -> str:
    base = posixpath.basename(path.rstrip("/"))
    return base[:-4] if base.endswith(".tar") else base


def parse_range(spec: str) -> tuple[str, str]:
    """"sa_000000..sa_000009" -> ("sa_000000", "sa_000009") (inclusive, compared by name)."""
    parts = spec.split("..")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected a shard range 'FIRST..LAST' (e.g. sa_000000..sa_000009), "
                         f"got '{spec}'")
    return parts[0], parts[1]


def natural_key(name: str) -> list:
    """Sort key that orders the digit runs of a name by value ("sa_2" before "sa_10")."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def select_shards(names: list[str], shard_range: str | None = None,
                  limit: int | None = None) -> list[str]:
    """Shard names in natural order, narrowed to the inclusive `shard_range` "FIRST..LAST"
    (compared in natural order) and to the first `limit`. Every command selects with this."""
    ordered = sorted(names, key=natural_key)
    if shard_range:
        first, last = (natural_key(n) for n in parse_range(shard_range))
        ordered = [n for n in ordered if first <= natural_key(n) <= last]
    return ordered[:limit] if limit is not None else ordered


def list_shards(
    urls: list[str],
    shard_range: str | None = None,
    limit: int | None = None,
    storage_options: dict | None = None,
) -> list[Shard]:
    """Expand URLs into shards, sorted by name.

    Each URL may be a tar file, a glob (`s3://b/sa_*.tar`), a folder holding tars (every
    `*.tar` in it) or a folder of images (one shard named after the folder).
    """
    found: dict[str, Shard] = {}
    for url in urls:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if fs.isfile(path):
            paths = [path]
        elif any(c in path for c in "*?["):
            paths = sorted(fs.glob(path))
        elif fs.isdir(path):
            tars = sorted(fs.glob(posixpath.join(path, "*.tar")))
            paths = tars or [path]
        else:
            raise FileNotFoundError(f"no shard found at '{url}'")
        for p in paths:
            container = "tar" if p.endswith(".tar") else "folder" if fs.isdir(p) else "unknown"
            if container == "unknown":
                raise ValueError(f"expected a .tar file or a folder of images, got '{p}'")
            name = _shard_name(p)
            full = fs.unstrip_protocol(p) if "://" in url else p
            if name in found and found[name].url != full:
                raise ValueError(f"two shards named '{name}': '{found[name].url}' and '{full}'")
            found[name] = Shard(name=name, url=full, container=container)
    return [found[name] for name in select_shards(list(found), shard_range, limit)]
