"""A shard read by many tasks (input.images_per_task) is the shard read by one: the same rows,
byte for byte, the same commit marker counts; a shard still commits once, when all its pieces
are written; a killed run resumes piece by piece."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from operators.shards.layout import commit_marker
from operators.shards.sample import write_sample_corpus
from pipelines.config import parse_config
from pipelines.embed import run_embed
from tests.operators.test_read_pieces import _odd_tar


def _cfg(inp, out, per_task: int | None = None, **extra):
    data = {"input": {"urls": [str(inp)]}, "output": {"path": str(out)},
            # batch 1: an image's embedding does not depend on which images share its batch
            "model": {"name": "sam_tiny", "precision": "fp32", "batch_size": 1},
            "compute": {"ray_batch_size": 4}}
    if per_task:
        data["input"]["images_per_task"] = per_task
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def _table(out: Path) -> tuple[dict, bytes]:
    """Every column by name (rows sorted by key), and the embedding bytes of the ok rows."""
    table = pq.read_table(out).sort_by("key")
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    emb = ok.column("embedding").combine_chunks().storage.flatten().to_numpy()
    return ({c: table.column(c).to_pylist() for c in table.column_names if c != "embedding"},
            emb.tobytes())


def _stats(out: Path, shard: str) -> dict:
    return json.loads(Path(commit_marker(str(out), shard)).read_text())


def _same(a: dict, b: dict) -> None:
    for k in ("images", "ok", "failed", "shard_error", "skipped_members", "members"):
        assert a[k] == b[k], (k, a[k], b[k])


def test_a_shard_in_pieces_gives_the_rows_of_one_task(ray_local, tmp_path):
    write_sample_corpus(str(tmp_path / "in"), shards=2, images_per_shard=8, seed=5,
                        min_side=64, max_side=96)
    one = run_embed(_cfg(tmp_path / "in", tmp_path / "one"))
    cut = run_embed(_cfg(tmp_path / "in", tmp_path / "cut", per_task=3))
    assert one.complete and cut.complete and cut.shards_done == 2 and cut.images_ok == 16
    assert _table(tmp_path / "one") == _table(tmp_path / "cut")  # keys, content, embeddings
    for shard in ("sa_000000", "sa_000001"):
        a, b = _stats(tmp_path / "one", shard), _stats(tmp_path / "cut", shard)
        _same(a, b)
        assert (a["pieces"], b["pieces"]) == (1, 3)
    assert run_embed(_cfg(tmp_path / "in", tmp_path / "cut", per_task=3)).shards_skipped == 2


def test_odd_members_in_pieces_give_the_rows_and_counts_of_one_task(ray_local, tmp_path):
    _odd_tar(tmp_path / "in" / "odd.tar")
    one = run_embed(_cfg(tmp_path / "in", tmp_path / "one"))
    cut = run_embed(_cfg(tmp_path / "in", tmp_path / "cut", per_task=2))
    assert one.complete and cut.complete
    assert _table(tmp_path / "one") == _table(tmp_path / "cut")
    a, b = _stats(tmp_path / "one", "odd"), _stats(tmp_path / "cut", "odd")
    _same(a, b)
    assert b["pieces"] > 3 and b["members"]["duplicate_key"] == 3
    assert b["members"]["hardlink"] == 3 and b["members"]["non_utf8_name"] == 1
    keys = collections.Counter(pq.read_table(tmp_path / "cut", columns=["key"])
                               .column("key").to_pylist())
    assert set(keys.values()) == {1} and {"a~2", "a~3", "b~2"} <= set(keys)


def test_a_kept_part_is_not_redone_in_its_piece(ray_local, tmp_path):
    """Resume inside a shard with pieces: parts kept from an earlier run are skipped by the
    pieces they belong to; each image ends up in one row."""
    write_sample_corpus(str(tmp_path / "in"), shards=1, images_per_shard=9, seed=2,
                        min_side=64, max_side=96)
    out = tmp_path / "out"
    first = run_embed(_cfg(tmp_path / "in", out, per_task=3, compute={"ray_batch_size": 2}))
    assert first.complete
    # Lose the commit marker and some parts, as a killed run would have left them
    folder = out / "sa_000000"
    Path(commit_marker(str(folder.parent), folder.name)).unlink()
    parts = sorted(folder.glob("*.parquet"))
    for p in parts[::2]:
        p.unlink()
    kept = sum(pq.read_metadata(p).num_rows for p in parts[1::2])
    second = run_embed(_cfg(tmp_path / "in", out, per_task=3, compute={"ray_batch_size": 2}))
    assert second.complete and second.images_resumed == kept
    assert second.images_processed == 9 - kept
    keys = collections.Counter(pq.read_table(out, columns=["key"]).column("key").to_pylist())
    assert len(keys) == 9 and set(keys.values()) == {1}


@pytest.mark.slow  # 1001 shards through two jobs on the S3 test server: minutes on 2 cores
def test_sa1b_shard_count_each_shard_listed_and_committed_once(ray_local, s3_bucket,
                                                               s3_endpoint):
    """SA-1B's 1,001 shards (more than one ListObjectsV2 page of 1000) on the S3 test server,
    two tiny images each, through embed and autolabel with sam_tiny: every shard is listed and
    committed once, and a rerun skips them all."""
    from pipelines.autolabel import run_autolabel
    from pipelines.config import AutolabelConfig

    fs, bucket = s3_bucket
    shards = 1001
    write_sample_corpus(f"s3://{bucket}/corpus", shards=shards, images_per_shard=2, seed=11,
                        min_side=24, max_side=32,
                        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    for name, run, cls, extra in (
            ("emb", run_embed, None, {}),
            ("masks", run_autolabel, AutolabelConfig, {"generator": {"points_per_side": 2}})):
        data = {"input": {"urls": [f"s3://{bucket}/corpus/"]},
                "output": {"path": f"s3://{bucket}/{name}"}, "model": {"name": "sam_tiny"},
                "compute": {"ray_batch_size": 64}, "storage": {"endpoint_url": s3_endpoint},
                **extra}
        cfg = parse_config(data, cls) if cls else parse_config(data)
        summary = run(cfg)
        assert summary.complete, summary.text()[:2000]
        assert (summary.shards_total, summary.shards_done, summary.images_ok) == (
            shards, shards, 2 * shards)
        fs.invalidate_cache()
        markers = fs.ls(f"{bucket}/{name}.samdata/commits")
        assert len(markers) == shards
        table = pq.read_table(f"{bucket}/{name}", filesystem=fs, columns=["shard", "key"])
        per_shard = collections.Counter(table.column("shard").to_pylist())
        assert len(per_shard) == shards and set(per_shard.values()) == {2}
        again = run(cfg)
        assert again.shards_skipped == shards and again.images_processed == 0


def test_each_piece_is_one_ranged_get_on_s3(s3_bucket, s3_endpoint):
    """With storage.block_size unset, a piece's bytes come in one ranged GET (its header pass
    apart), and its rows are those of the whole shard's read."""
    from operators.config import InputConfig, StorageConfig
    from operators.shards.pieces import plan_pieces
    from operators.shards.prepare import read_and_prepare
    from tests.s3_proxy import FaultProxy

    fs, bucket = s3_bucket
    write_sample_corpus(f"s3://{bucket}/corpus", shards=1, images_per_shard=12, seed=8,
                        min_side=300, max_side=400,
                        storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    proxy = FaultProxy(s3_endpoint)
    try:
        storage = StorageConfig(endpoint_url=proxy.url)
        url = f"s3://{bucket}/corpus/sa_000000.tar"
        item = {"shard": "sa_000000", "url": url, "container": "tar"}
        cfg = InputConfig(urls=["-"], images_per_task=3)
        pieces = plan_pieces(item, cfg, storage.options(), storage)
        assert len(pieces) == 4
        path = next(iter(proxy.gets))
        header_gets = proxy.gets[path]
        rows = []
        for piece in pieces:
            before = proxy.gets[path]
            rows += [r["key"] for r in read_and_prepare(piece, "sam_tiny", cfg,
                                                        storage.options(), storage=storage)
                     if not r["is_end"]]
            assert proxy.gets[path] - before == 1  # one ranged GET for the piece
        whole = [r["key"] for r in read_and_prepare(item, "sam_tiny", cfg, storage.options(),
                                                    storage=storage) if not r["is_end"]]
        assert rows == whole and len(rows) == 12 and header_gets >= 1
    finally:
        proxy.stop()


def test_autolabel_in_pieces_gives_the_masks_of_one_task(ray_local, tmp_path):
    from pipelines.autolabel import run_autolabel
    from pipelines.config import AutolabelConfig

    write_sample_corpus(str(tmp_path / "in"), shards=1, images_per_shard=6, seed=9,
                        min_side=64, max_side=96)

    def run(out, per_task=None):
        data = {"input": {"urls": [str(tmp_path / "in")]}, "output": {"path": str(out)},
                "model": {"name": "sam_tiny", "precision": "fp32", "batch_size": 1},
                "compute": {"ray_batch_size": 2},
                "generator": {"points_per_side": 4, "pred_iou_thresh": 0.0,  # filters off:
                              "stability_score_thresh": 0.0}}  # masks are kept
        if per_task:
            data["input"]["images_per_task"] = per_task
        summary = run_autolabel(parse_config(data, AutolabelConfig))
        assert summary.complete and summary.images_ok == 6
        table = pq.read_table(out).sort_by("key")
        return {c: table.column(c).to_pylist() for c in table.column_names}

    one = run(tmp_path / "one")
    assert one == run(tmp_path / "cut", per_task=2)
    assert sum(len(a) for a in one["annotations"]) > 0
    assert _stats(tmp_path / "cut", "sa_000000")["pieces"] == 3
