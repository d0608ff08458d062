"""The header pass over a tar shard: where each member starts, where its data starts, its size.

A tar holds no table of contents, so finding the byte ranges a shard can be cut at means
walking its 512-byte headers. This pass reads only the headers: `RangedFile` is a seekable
view of the object in which every miss is one ranged GET of `INDEX_READAHEAD` bytes (retried
as the reader retries, resumable.with_retries), and tarfile's seekable mode seeks past each
member's data. An SA-1B shard (~22k members of ~0.5 MB) is about one GET per member (~350 MB
of its 11 GB); a tar of small members needs one GET per 16 KiB. GETs wait on each other (the
next header's place is in this one), so a large tar is walked in up to 16 regions at once,
each joined to the one before only where that walk lands exactly on its first header
(`scan_tar`): an SA-1B shard takes ~1.4k GETs in a row instead of ~22k. The index is
computed by the planning task of each run for the shards still to do (committed shards cost
nothing), not stored: input buckets are often read-only (SA-1B's is), and the pass costs a
fraction of the shard's own read.

A tar that breaks off is indexed up to the break (`TarIndex.error`); the last piece then reads
to the end of the object and meets the break itself, as the one-task reader does. A compressed
tar cannot be read by ranges: it is one piece.
"""

from __future__ import annotations

import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import fsspec

from ..config import StorageConfig
from .resumable import with_retries

INDEX_READAHEAD = 16 * 1024  # bytes per ranged GET of the header pass: a header is 512
#   bytes; 16 KiB covers the headers of many small members in one GET, and on SA-1B (members
#   of ~0.5 MB) it is ~3% of the shard's bytes, read at S3's ~20 ms a GET
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz
REGION_BYTES = 256 * 2**20  # a tar this large or larger is walked in regions, in parallel
MAX_REGIONS = 16  # an SA-1B shard (~11 GB): 16 walks of ~1.4k members instead of one of 22k
CANDIDATE_WINDOW = 2**20  # bytes searched for a region's first header (one GET)


@dataclass(frozen=True)
class Member:
    """One tar member as its header says. kind: "file", "link" (hard link), or a special
    kind of read.MEMBER_KINDS (symlink, fifo, device, directory, other); header: byte offset
    of its first header block (GNU long-name and pax blocks included); data: offset of its
    data; size: data bytes; linkname: a link's target name."""

    name: str
    kind: str
    header: int
    data: int
    size: int
    linkname: str = ""


@dataclass
class TarIndex:
    """The members of a tar shard in tar order, the object's size, whether it is compressed
    (then no members are listed), and the error the header pass stopped at (None: whole)."""

    size: int
    members: list[Member] = field(default_factory=list)
    compressed: bool = False
    error: str | None = None


class RangedFile:
    """A seekable, read-only view of `path` (`size` bytes) on `fs`: each read that misses the
    buffer is one ranged GET of at least `readahead` bytes, retried per `storage`
    (StorageUnavailable when it keeps failing)."""

    def __init__(self, fs, path: str, size: int, storage: StorageConfig,
                 readahead: int = INDEX_READAHEAD, base: int = 0) -> None:
        # a view of the object from byte `base` on: position 0 is `base`, `size` what follows
        self.fs, self.path, self.size, self.storage = fs, path, size - base, storage
        self.base = base
        self.readahead = readahead
        self.pos = 0
        self.gets = 0
        self._buf, self._buf_start = b"", 0
        self.mode = "rb"
        self.name = path

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _fetch(self, start: int, n: int) -> None:
        end = min(self.size, start + max(n, self.readahead))
        a, b = self.base + start, self.base + end
        self._buf = with_retries(
            f"'{self.path}' bytes {a}..{b} (header pass)",
            lambda: self.fs.cat_file(self.path, start=a, end=b), self.storage)
        self._buf_start = start
        self.gets += 1

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes from the position (fewer only at the end of the object)."""
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        out = []
        while n > 0:
            offset = self.pos - self._buf_start
            if not 0 <= offset < len(self._buf):
                self._fetch(self.pos, n)
                offset = 0
                if not self._buf:
                    break  # the object is shorter than it said
            chunk = self._buf[offset : offset + n]
            out.append(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
        return b"".join(out)

    def close(self) -> None:
        self._buf = b""


def _kind(member: tarfile.TarInfo) -> str:
    from .read import special_kind

    if member.isfile():
        return "file"
    if member.islnk():
        return "link"
    return special_kind(member)


def object_size(url: str, storage_options: dict | None, storage: StorageConfig) -> int:
    """The size of the object at `url` in bytes (retried; StorageUnavailable when gone)."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return int(with_retries(f"the size of '{url}'", lambda: fs.info(path)["size"], storage))


def _walk(fs, path: str, size: int, storage: StorageConfig, start: int,
          stop: int | None) -> tuple[list[Member], int | None, str | None]:
    """Walk the headers from the header at byte `start` until one at or past `stop` (None: to
    the end). Returns (members, offset of the header it stopped at or None, error or None)."""
    members: list[Member] = []
    f = RangedFile(fs, path, size, storage, base=start)
    try:
        tar = tarfile.open(fileobj=f, mode="r:")
        while (m := tar.next()) is not None:
            if stop is not None and start + m.offset >= stop:
                return members, start + m.offset, None
            members.append(Member(m.name, _kind(m), start + m.offset, start + m.offset_data,
                                  m.size, m.linkname))
            tar.members.clear()  # the index keeps its own list
    except (tarfile.TarError, OSError, EOFError) as e:
        return members, None, f"{type(e).__name__}: {e}"
    return members, None, None


def _first_header(fs, path: str, size: int, storage: StorageConfig, at: int) -> int | None:
    """The offset of the first 512-aligned block at or after `at` (512-aligned) within
    CANDIDATE_WINDOW that parses as a ustar/GNU header with a valid checksum, or None. Member
    data can hold such a block (a tar inside the tar): the caller verifies every candidate."""
    f = RangedFile(fs, path, size, storage, readahead=CANDIDATE_WINDOW, base=at)
    buf = f.read(CANDIDATE_WINDOW)
    for o in range(0, len(buf) - tarfile.BLOCKSIZE + 1, tarfile.BLOCKSIZE):
        block = buf[o : o + tarfile.BLOCKSIZE]
        if block[257:262] != b"ustar":
            continue
        try:
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            continue
        return at + o
    return None


def scan_tar(url: str, storage_options: dict | None = None,
             storage: StorageConfig | None = None, size: int | None = None,
             regions: int | None = None) -> TarIndex:
    """The header pass over the tar at `url` (see the module docstring). Raises
    StorageUnavailable when the object cannot be read.

    A tar of REGION_BYTES or more is walked in `regions` parts at once (default: one per
    REGION_BYTES, at most MAX_REGIONS): each part starts at the first header found past its
    cut and walks to the next part's start. A part is used only when the walk before it
    landed exactly on its first header; at the first that does not (a header-like block in
    member data, a long name across the cut) the walk goes on alone from where it landed, so
    the members are always those of one walk from byte 0."""
    storage = storage or StorageConfig()
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if size is None:
        size = object_size(url, storage_options, storage)
    index = TarIndex(size=size)
    if RangedFile(fs, path, size, storage).read(6).startswith(COMPRESSED_MAGIC):
        index.compressed = True
        return index
    k = regions if regions is not None else min(MAX_REGIONS, size // REGION_BYTES)
    starts = [0]
    for i in range(1, max(1, k)):
        at = (i * size // k) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
        c = _first_header(fs, path, size, storage, at) if at > starts[-1] else None
        if c is not None and c > starts[-1]:
            starts.append(c)
    stops = [*starts[1:], None]
    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        walks = list(pool.map(lambda a_b: _walk(fs, path, size, storage, *a_b),
                              zip(starts, stops, strict=True)))
    for (members, landed, error), stop in zip(walks, stops, strict=True):
        index.members += members
        if error or stop is None or landed is None:  # broke, or walked to the end
            index.error = error
            break
        if landed != stop:  # the next part started at a false header: go on alone
            rest, _, index.error = _walk(fs, path, size, storage, landed, None)
            index.members += rest
            break
    return index
