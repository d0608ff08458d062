"""What produced an output folder, so that a rerun never mixes another model's rows in.

`{root}.samdata/identity.json` (shards/layout.py) holds the job, the model, its checkpoint's
sha256 (or the seed of random weights) and every setting that changes the rows (the
generator's thresholds, the prompts, the embedding dtype, ...), written before the first
part. A run whose identity equals the folder's resumes it; another is refused
(`OutputMismatch`) naming the fields that differ and the two ways out: a new output.path, or
`--overwrite`, which clears the folder's shards first (`clear_output`).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from .layout import meta_root


class OutputMismatch(ValueError):
    """The output folder holds the rows of another job, model or setting."""


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(held: dict, wanted: dict) -> list[str]:
    """'field: there X, here Y' for every flattened field whose value differs."""
    a, b = _flat(held), _flat(wanted)
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def _fs(root: str, storage_options: dict | None):
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    return fs, base.rstrip("/")


def read_identity(root: str, storage_options: dict | None = None) -> dict | None:
    """The identity recorded in `root`, or None when there is none."""
    fs, base = _fs(root, storage_options)
    fs.invalidate_cache(meta_root(base))
    try:
        return json.loads(fs.cat_file(f"{meta_root(base)}/identity.json"))
    except FileNotFoundError:
        return None


def has_shards(root: str, storage_options: dict | None = None) -> bool:
    """Whether `root` holds any shard folder (parts or markers of an earlier run)."""
    fs, base = _fs(root, storage_options)
    return bool((fs.exists(base) and fs.glob(f"{base}/*/*.parquet"))
                or fs.glob(f"{meta_root(base)}/commits/*.json"))


def clear_output(root: str, storage_options: dict | None = None) -> int:
    """Remove every shard folder under `root` and their commit markers; returns how many
    folders were removed."""
    fs, base = _fs(root, storage_options)
    commits = f"{meta_root(base)}/commits"
    if fs.exists(commits):
        fs.rm(commits, recursive=True)
    if not fs.exists(base):
        return 0
    removed = 0
    for entry in fs.ls(base, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") == "directory" and not name.startswith((".", "_")):
            fs.rm(entry["name"], recursive=True)
            removed += 1
    fs.invalidate_cache(base)
    return removed


def claim_output(root: str, identity: dict, storage_options: dict | None = None,
                 overwrite: bool = False, what: str = "output.path",
                 way_out: str = "use another output.path, or --overwrite to clear its shards "
                                "first") -> None:
    """Make `root` the output of `identity`: resume when it already is; with `overwrite`,
    clear another run's shards first; else raise OutputMismatch naming the differences (what:
    the setting that names `root`; way_out: what the user can do). A folder with shards but
    no identity (written before identities) is adopted as it is."""
    held = read_identity(root, storage_options)
    if held is not None and held != identity:
        if not overwrite:
            diff = differences(held, identity)
            raise OutputMismatch(
                f"{what} '{root}' holds the output of another run ({'; '.join(diff[:4])}"
                f"{'; ...' if len(diff) > 4 else ''}): {way_out}")
        clear_output(root, storage_options)
    elif held is None and overwrite:
        clear_output(root, storage_options)
    if held != identity:
        fs, base = _fs(root, storage_options)
        fs.makedirs(meta_root(base), exist_ok=True)
        fs.pipe_file(f"{meta_root(base)}/identity.json", json.dumps(identity, indent=1,
                                                                    sort_keys=True).encode())
