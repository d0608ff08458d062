"""Shards cut into pieces read as the whole shard does: the same samples (keys, bytes, json,
errors) in the same order, and the same `members` counts, summed over the pieces; the cut or
corrupt tar breaks in the last piece with the shard's own message."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from operators.config import InputConfig, StorageConfig
from operators.shards.index import RangedFile, scan_tar
from operators.shards.listing import Shard, list_shards
from operators.shards.piece import Piece
from operators.shards.pieces import cut_tar, plan_pieces
from operators.shards.read import Sample, ShardEnd, iter_shard
from tests.bad_corpus import jpeg, meta, write_bad_corpus, write_members
from tests.bad_corpus import member as _member


def _tar(path: Path, members, encoding: str = "utf-8") -> Shard:
    write_members(path, members, encoding)
    return Shard(path.stem, str(path), "tar")


def _read(shard: Shard, piece: Piece | None = None) -> tuple[list[Sample], ShardEnd]:
    parts = list(iter_shard(shard, piece=piece))
    return parts[:-1], parts[-1]


def _fields(samples: list[Sample]) -> list[tuple]:
    return [(s.key, s.source_uri, s.image, s.image_name, s.meta, s.error, s.extra)
            for s in samples]


def _read_in_pieces(shard: Shard, per_task: int, skip: list[str] | None = None):
    """Plan the shard's pieces and read each; (samples in piece order, summed end, items)."""
    item = {"shard": shard.name, "url": shard.url, "container": shard.container,
            "skip_keys": skip or []}
    items = plan_pieces(item, InputConfig(urls=["-"], images_per_task=per_task))
    samples: list[Sample] = []
    count = skipped = 0
    members: dict[str, int] = {}
    errors = []
    for it in items:
        got, end = _read(shard, Piece.of_item(it))
        samples += got
        count += end.count
        skipped += end.skipped_members
        errors += [end.error] if end.error else []
        for k, n in end.members.items():
            members[k] = members.get(k, 0) + n
    return samples, ShardEnd(count, errors[0] if errors else None, skipped, members), items


def _odd_tar(path: Path) -> Shard:
    """Every reader rule in one tar: repeated keys (far apart, so in different pieces), hard
    links to members of earlier pieces, dangling links, symlinks, fifos, devices, dirs,
    non-sample files, a second image of one key, a GNU long name, a non-UTF-8 name."""
    long = "deep/" + "d" * 120 + "/img"
    members = [_member("a.jpg", jpeg(16, 16, seed=1)), _member("a.json", meta(1)),
               _member("b.jpg", jpeg(16, 16, seed=2)), _member("pipe", kind=tarfile.FIFOTYPE),
               _member("c.jpg", jpeg(16, 16, seed=3)), _member("c.png", jpeg(8, 8, seed=4)),
               _member("readme.txt", b"hello"), _member(f"{long}.jpg", jpeg(12, 12, seed=5)),
               _member("d.jpg", kind=tarfile.LNKTYPE, linkname="a.jpg"),
               _member("e.jpg", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
               _member("a.jpg", jpeg(16, 16, seed=6)),  # a.jpg again: a~2
               _member("f.jpg", kind=tarfile.LNKTYPE, linkname="nowhere.jpg"),
               _member("dev", kind=tarfile.CHRTYPE), _member("sub", kind=tarfile.DIRTYPE),
               _member("caf\udce9.jpg", jpeg(10, 10, seed=7)),
               _member("g.jpg", jpeg(16, 16, seed=8)),
               _member("h.jpg", kind=tarfile.LNKTYPE, linkname=f"{long}.jpg"),
               _member("a.jpg", jpeg(16, 16, seed=9)),  # a~3
               _member("b.jpg", kind=tarfile.LNKTYPE, linkname="b.jpg"),  # b~2, a link
               _member("i.jpg", jpeg(16, 16, seed=10))]
    return _tar(path, members)


@pytest.mark.parametrize("per_task", [1, 2, 3, 100])
def test_pieces_of_an_odd_tar_read_as_the_whole_tar(tmp_path, per_task):
    shard = _odd_tar(tmp_path / "odd.tar")
    whole, end = _read(shard)
    samples, summed, items = _read_in_pieces(shard, per_task)
    assert _fields(samples) == _fields(whole)
    assert (summed.count, summed.error, summed.skipped_members, summed.members) == (
        end.count, end.error, end.skipped_members, end.members)
    assert end.members["duplicate_key"] == 3 and end.members["hardlink"] == 3
    keys = [s.key for s in whole]
    assert {"a~2", "a~3", "b~2", "d", "h"} <= set(keys)
    # a shard of at most images_per_task samples stays one item, unchanged
    assert (len(items) == 1) == (per_task >= end.count)
    if per_task == 1:
        assert len(items) == end.count and "piece" in items[1]


def test_the_last_piece_meets_the_break_of_a_cut_tar(tmp_path):
    write_bad_corpus(tmp_path)  # sa_000001.tar is cut inside a member's data
    shard = list_shards([str(tmp_path / "sa_000001.tar")])[0]
    whole, end = _read(shard)
    assert end.error and "unreadable after" in end.error
    samples, summed, items = _read_in_pieces(shard, 1)
    assert len(items) > 1
    assert _fields(samples) == _fields(whole)
    assert (summed.count, summed.error, summed.members) == (end.count, end.error, end.members)


def test_each_piece_takes_its_own_kept_keys(tmp_path):
    shard = _odd_tar(tmp_path / "odd.tar")
    keep = ["a", "a~3", "i", "not-in-the-tar"]
    _, _, items = _read_in_pieces(shard, 2, skip=keep)
    assert sorted(k for it in items for k in it["skip_keys"]) == sorted(keep)
    assert "not-in-the-tar" in items[-1]["skip_keys"]  # the last piece takes the unknown ones
    for it in items:
        got, _ = _read(shard, Piece.of_item(it))
        assert set(it["skip_keys"]) - {"not-in-the-tar"} <= {s.key for s in got}


def test_a_folder_is_cut_by_its_file_list(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(7):
        (folder / ("sub" if i % 2 else "") / f"im{i}.jpg").write_bytes(jpeg(12, 14, seed=i))
    (folder / "im3.json").write_bytes(meta(3))
    (folder / "notes.txt").write_text("x")
    shard = list_shards([str(folder)])[0]
    whole, end = _read(shard)
    samples, summed, items = _read_in_pieces(shard, 3)
    assert len(items) == 3 and all(Piece.of_item(it).files for it in items)
    assert _fields(samples) == _fields(whole)
    # skipped: notes.txt and im3.json (its image is sub/im3.jpg, another key)
    assert (summed.count, summed.skipped_members) == (end.count, end.skipped_members) == (7, 2)


def test_a_compressed_tar_stays_one_piece(tmp_path):
    plain = _odd_tar(tmp_path / "odd.tar")
    packed = tmp_path / "packed" / "odd.tar"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(Path(plain.url).read_bytes()))
    assert scan_tar(str(packed)).compressed
    item = {"shard": "odd", "url": str(packed), "container": "tar"}
    assert plan_pieces(item, InputConfig(urls=["-"], images_per_task=1)) == [item]


def test_the_header_pass_reads_headers_not_data(tmp_path):
    """A tar of 40 members of 100 KB: the header pass takes one small GET per member, not the
    4 MB; the cut lands on member headers."""
    shard = _tar(tmp_path / "big.tar", [_member(f"k{i:02d}.jpg", bytes(100_000))
                                        for i in range(40)])
    index = scan_tar(shard.url)
    assert [m.name for m in index.members] == [f"k{i:02d}.jpg" for i in range(40)]
    assert index.error is None and all(m.data == m.header + 512 for m in index.members)
    import fsspec

    fs = fsspec.filesystem("file")
    f = RangedFile(fs, shard.url, index.size, StorageConfig())
    with tarfile.open(fileobj=f, mode="r:") as tar:
        assert len(tar.getmembers()) == 40
    assert f.gets <= 41  # about one GET per header, 16 KiB each
    pieces = cut_tar(index.members, 10)
    assert [p.start for p, _ in pieces] == [index.members[i].header for i in (0, 10, 20, 30)]
    assert pieces[0][0].start == 0 and pieces[-1][0].end is None


def test_a_large_tar_walked_in_regions_gives_the_one_walk(tmp_path):
    """Regions joined only where the walk before lands on their first header: a tar holding a
    tar (header-like blocks in member data), long names and big members gives the members of
    one walk from byte 0, and a cut tar the same members and error."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as t:
        for i in range(30):
            info = tarfile.TarInfo(f"inner{i}.jpg")
            info.size = 3000
            t.addfile(info, io.BytesIO(bytes(3000)))
    members = []
    for i in range(24):
        name = f"{'x' * 150}{i:02d}.jpg" if i % 5 == 0 else f"k{i:02d}.jpg"
        members.append(_member(name, bytes(range(256)) * (200 + 37 * i)))
        if i % 7 == 3:
            members.append(_member(f"k{i:02d}.tar", inner.getvalue()))  # tar in the tar
    shard = _tar(tmp_path / "big.tar", members)
    one = scan_tar(shard.url, regions=1)
    assert one.error is None and len(one.members) == 24 + 3
    for regions in (2, 5, 9, 40):
        got = scan_tar(shard.url, regions=regions)
        assert (got.members, got.error) == (one.members, one.error), regions
    data = Path(shard.url).read_bytes()
    cut = tmp_path / "cut" / "big.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) * 2 // 3])
    whole = scan_tar(str(cut), regions=1)
    assert whole.error and 0 < len(whole.members) < 27
    for regions in (3, 7):
        got = scan_tar(str(cut), regions=regions)
        assert (got.members, got.error) == (whole.members, whole.error), regions


def test_a_shard_the_pass_cannot_cut_is_read_whole(tmp_path, monkeypatch):
    from operators.shards import pieces

    shard = _odd_tar(tmp_path / "odd.tar")
    item = {"shard": shard.name, "url": shard.url, "container": "tar"}

    def broken(*args, **kwargs):
        raise ValueError("an unforeseen header")

    monkeypatch.setattr(pieces, "scan_tar", broken)
    monkeypatch.setattr(pieces, "HEADER", 1)  # small as the tar is, it would be cut
    assert plan_pieces(item, InputConfig(urls=["-"], images_per_task=1)) == [item]
