"""A corpus of broken inputs, written by the tests: every way a sample can fail."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(h: int, w: int, seed: int = 0, mode: str = "RGB", exif_rotate: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode == "CMYK":
        im = im.convert("CMYK")
    elif mode == "L":
        im = im.convert("L")
    buf = io.BytesIO()
    if exif_rotate:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise on display
        im.save(buf, "JPEG", exif=exif)
    else:
        im.save(buf, "JPEG")
    return buf.getvalue()


def png_rgba(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 4), 200, np.uint8), "RGBA").save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 3000) -> bytes:
    """A small file that decodes to side x side pixels."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def meta(image_id: int) -> bytes:
    return json.dumps({"image": {"image_id": image_id, "file_name": f"sa_{image_id}.jpg"},
                       "annotations": []}).encode()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """A tar member of any kind (regular file, link, fifo, device, directory) and its bytes."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def write_members(path: Path, members: list[tuple[tarfile.TarInfo, bytes]],
                  encoding: str = "utf-8") -> Path:
    """Write `members` (see `member`) as a GNU tar at `path`; names that are not UTF-8 keep
    their bytes (surrogate escapes). Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding=encoding,
                      errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]], truncate_to: int | None = None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[:truncate_to] if truncate_to else data)


# key -> expected status ("ok" or a substring of the error)
EXPECTED_BAD = {
    "sa_1": "ok",
    "sa_2": "truncated",
    "sa_3": "not an image",
    "sa_4": "0 bytes",
    "sa_5": "missing json",
    "sa_6": "malformed json",
    "sa_7": "no image member",
    "sa_8": "max_image_pixels",
    "sa_9": "ok",  # CMYK
    "sa_10": "ok",  # grayscale
    "sa_11": "ok",  # EXIF-rotated 40x60 -> 60x40
    "sa_12": "ok",  # RGBA PNG
}


def write_bad_corpus(root: Path) -> dict[str, int]:
    """Two shards: sa_000000.tar with one sample of every kind of failure, and a truncated
    sa_000001.tar. Returns the number of samples each shard holds."""
    root.mkdir(parents=True, exist_ok=True)
    good = jpeg(40, 60, 1)
    members = [
        ("sa_1.jpg", good), ("sa_1.json", meta(1)),
        ("sa_2.jpg", good[: len(good) // 2]), ("sa_2.json", meta(2)),      # truncated JPEG
        ("sa_3.jpg", b"this is not an image at all"), ("sa_3.json", meta(3)),  # not an image
        ("sa_4.jpg", b""), ("sa_4.json", meta(4)),                        # zero bytes
        ("sa_5.jpg", good),                                               # json missing
        ("sa_6.jpg", good), ("sa_6.json", b"{not json"),                  # malformed json
        ("sa_7.json", meta(7)),                                           # json, no image
        ("sa_8.png", bomb_png()), ("sa_8.json", meta(8)),                 # too many pixels
        ("sa_9.jpg", jpeg(30, 50, 2, mode="CMYK")), ("sa_9.json", meta(9)),
        ("sa_10.jpg", jpeg(30, 50, 3, mode="L")), ("sa_10.json", meta(10)),
        ("sa_11.jpg", jpeg(40, 60, 4, exif_rotate=True)), ("sa_11.json", meta(11)),
        ("sa_12.png", png_rgba(20, 30)), ("sa_12.json", meta(12)),
        ("README.txt", b"not a sample"),                                  # skipped member
    ]
    write_tar(root / "sa_000000.tar", members)
    # A tar cut in the middle of its third image: two whole samples, then a broken one
    members2 = [(f"sa_{i}.jpg", jpeg(30, 30, i)) for i in (101, 102, 103)]
    members2 = [m for i, m in enumerate(members2) for m in (m, (f"sa_{101 + i}.json",
                                                                meta(101 + i)))]
    write_tar(root / "sa_000001.tar", members2)
    full = (root / "sa_000001.tar").read_bytes()
    cut = full.find(b"sa_103.jpg") + 512 + 100  # header of sa_103.jpg, then 100 bytes of it
    (root / "sa_000001.tar").write_bytes(full[:cut])
    return {"sa_000000": len(EXPECTED_BAD), "sa_000001": 3}
