"""Copying the images of an export beside its label files, so that the labels' file names
resolve in a labeling tool or a trainer.

Each ok row's image is fetched from its source shard (`source_uri` = `{tar or folder
url}#{member}`, read as `maskset.load_source_image` reads it), but each source shard is read
once for all of its rows, and the member's bytes are written as they are (not re-encoded),
under their own extension: `{dest}/{shard}/{key}{ext}`, shard and key made safe file names
(`export.safe_relpath`, so nothing lands outside `dest`); two images that would land on one
file are refused, naming both. A row whose bytes at the source are not those it was made from
(its `image_sha256`) is refused, as is a key the shard no longer holds.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Callable

import fsspec

from ..shards.listing import Shard
from ..shards.read import Sample, iter_shard

_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
               "WEBP": ".webp"}


def image_ext(name: str | None, data: bytes) -> str:
    """The extension to write an image under: its member's (`.jpg`, `.PNG` as they are), else
    the one of the format Pillow reads in the bytes (`.img` when it reads none)."""
    ext = posixpath.splitext(name or "")[1]
    if ext:
        return ext
    from PIL import Image

    try:
        return _FORMAT_EXT.get(Image.open(io.BytesIO(data)).format, ".img")
    except Exception:  # noqa: BLE001 - not an image Pillow knows: keep the bytes anyway
        return ".img"


def copy_images(rows: list[dict], dest: str, storage_options: dict | None = None,
                out_storage_options: dict | None = None,
                relpath: Callable[[dict], str] | None = None) -> dict[tuple[str, str], str]:
    """Write the image of every row (dicts with shard, key, source_uri and optionally
    image_sha256) under `dest`; returns {(shard, key): path relative to dest, extension
    included}. relpath(row) -> the path without extension (default `{shard}/{key}`, safe)."""
    from .export import safe_relpath

    relpath = relpath or (lambda r: f"{safe_relpath(r['shard'])}/{safe_relpath(r['key'])}")
    fs, base = fsspec.core.url_to_fs(dest, **(out_storage_options or {}))
    by_source: dict[str, dict[str, dict]] = {}  # source url -> key -> row
    for row in rows:
        url = row["source_uri"].split("#", 1)[0]
        by_source.setdefault(url, {})[row["key"]] = row
    written: dict[str, dict] = {}  # relative path -> the row written there
    made: set[str] = set()
    names: dict[tuple[str, str], str] = {}
    for url, wanted in by_source.items():
        shard = Shard.from_url(next(iter(wanted.values()))["shard"], url)
        left = dict(wanted)
        for sample in iter_shard(shard, storage_options):
            if not isinstance(sample, Sample) or sample.key not in left:
                continue
            row = left.pop(sample.key)
            if sample.image is None:
                raise FileNotFoundError(f"expected an image for key '{row['key']}' in '{url}', "
                                        f"got {sample.error or 'none'}")
            sha = row.get("image_sha256")
            if sha and hashlib.sha256(sample.image).hexdigest() != sha:
                raise ValueError(f"expected the image bytes key '{row['key']}' was labelled "
                                 f"from (sha256 {sha[:12]}...), got other bytes in '{url}'")
            rel = relpath(row) + image_ext(sample.image_name, sample.image)
            if rel in written:
                other = written[rel]
                raise ValueError(f"images '{other['shard']}/{other['key']}' and "
                                 f"'{row['shard']}/{row['key']}' would both be written as "
                                 f"'{rel}': expected keys that differ after making them safe "
                                 f"file names")
            written[rel] = row
            folder = posixpath.dirname(f"{base}/{rel}")
            if folder not in made:
                fs.makedirs(folder, exist_ok=True)
                made.add(folder)
            fs.pipe_file(f"{base}/{rel}", sample.image)
            names[(row["shard"], row["key"])] = rel
            if not left:
                break
        if left:
            missing = sorted(left)
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(f"expected keys {missing[:3]}{more} in '{url}', got no "
                                    f"such members")
    return names


IMAGE_COLUMNS = ("key", "shard", "source_uri", "status", "image_sha256")


def copy_dataset_images(root: str, dest: str, storage_options: dict | None = None,
                        out_storage_options: dict | None = None, shards: str | None = None,
                        relpath: Callable[[dict], str] | None = None
                        ) -> dict[tuple[str, str], str]:
    """copy_images for the ok rows of the mask dataset at `root` (committed shards, in the
    `shards` range)."""
    from .maskset import iter_rows

    rows = [r for r in iter_rows(root, storage_options, shards, columns=IMAGE_COLUMNS)
            if r["status"] == "ok"]
    return copy_images(rows, dest, storage_options, out_storage_options, relpath)
