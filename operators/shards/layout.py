"""Where an output's bookkeeping lives: beside the dataset, never inside it.

    {root}/{shard}/*.parquet                 the dataset: nothing but Parquet parts
    {root}.samdata/identity.json             what produced it (shards.identity)
    {root}.samdata/lease.json                the run holding it now (shards.lease)
    {root}.samdata/commits/{shard}.json      each shard's commit marker (shards.write)

A folder that holds only Parquet files is what every reader opens with no arguments:
`polars.scan_parquet(root)` refuses a folder holding other files (even hidden ones), Hugging
Face `datasets` tries to read every file as Parquet, DuckDB's `**/*.parquet` and pyarrow skip
them. Outputs written before this layout kept their markers at `{root}/{shard}/_stats.json`;
those are still read (and removed when a shard is redone).
"""

from __future__ import annotations

META_SUFFIX = ".samdata"
LEGACY_MARKER = "_stats.json"


def meta_root(root: str) -> str:
    """The bookkeeping folder of the output `root` (a path or URL without protocol)."""
    root = root.rstrip("/")
    if not root or root.endswith(":") or "/" not in root.lstrip("/"):
        raise ValueError(f"output.path: expected a folder inside a bucket or a parent folder "
                         f"(its bookkeeping goes beside it, in '<path>{META_SUFFIX}'), got "
                         f"'{root or '/'}'")
    return root + META_SUFFIX


def commit_marker(root: str, shard: str) -> str:
    """The commit marker of `shard` of the output `root`."""
    return f"{meta_root(root)}/commits/{shard}.json"


def legacy_marker(root: str, shard: str) -> str:
    """Where outputs written before this layout kept a shard's commit marker."""
    return f"{root.rstrip('/')}/{shard}/{LEGACY_MARKER}"
