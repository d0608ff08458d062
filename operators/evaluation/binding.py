"""Ground truth bound to its images: every check that the data an evaluation measures belong
together, run before any model does (a plausible number from the wrong data is worse than no
number).

Facts of an image (`ImageFacts`) come from its shard without decoding: the size its header
gives (EXIF orientation applied, as decoding does), the sha256 of its bytes and the `image`
record of its SA-1B json. They are checked against:
- the SA-1B json's own `image` record (width, height, file_name, image_id);
- a COCO instances file's `images[]` entry (width, height; and the bytes' sha256 when the file
  says it, as `samdata export --format coco` writes it in `samdata_sha256`);
- a label row (width, height, `image_sha256`: the labels were made from these bytes).

A mismatch is a `GroundTruthMismatch` naming the first keys and how many there are.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image

_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class GroundTruthMismatch(ValueError):
    """The ground truth, labels or embeddings are not of the images at hand (the message
    names the first keys); the run is refused before any model runs."""


@dataclass(frozen=True)
class ImageFacts:
    """What a sample's bytes and json say of it. hw: (h, w) from the header, oriented, or None
    when the header cannot be read (decoding will report it); sha256: hex of the image
    member's bytes ("" without one); record: the json's `image` dict or None."""

    shard: str
    key: str
    hw: tuple[int, int] | None
    sha256: str
    image_name: str | None = None
    record: dict | None = None

    @property
    def where(self) -> str:
        return f"{self.shard}/{self.key}"


def header_hw(data: bytes) -> tuple[int, int] | None:
    """(h, w) of an encoded image from its header, EXIF orientation applied; None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            return (w, h) if im.getexif().get(0x0112, 1) in _TRANSPOSED else (h, w)
    except Exception:  # noqa: BLE001 - the decoder says why, on its own row
        return None


def image_facts(shard: str, key: str, image: bytes | None, image_name: str | None = None,
                meta: dict | None = None) -> ImageFacts:
    """The facts of one sample (see ImageFacts)."""
    record = meta.get("image") if isinstance(meta, dict) and isinstance(
        meta.get("image"), dict) else None
    return ImageFacts(shard=shard, key=key, hw=header_hw(image) if image else None,
                      sha256=hashlib.sha256(image).hexdigest() if image else "",
                      image_name=image_name, record=record)


def _size_problem(what: str, width, height, facts: ImageFacts) -> str | None:
    if facts.hw is None or width is None or height is None:
        return None
    if (int(height), int(width)) != facts.hw:
        return (f"{what} says {int(width)}x{int(height)}, the image is "
                f"{facts.hw[1]}x{facts.hw[0]}")
    return None


def sa1b_problem(facts: ImageFacts) -> str | None:
    """Why the sample's own json does not describe its image, or None."""
    rec = facts.record
    if rec is None:
        return None
    problem = _size_problem("its json", rec.get("width"), rec.get("height"), facts)
    if problem:
        return problem
    name = rec.get("file_name")
    if name and facts.image_name and posixpath.basename(str(name)) != posixpath.basename(
            facts.image_name):
        return f"its json names file '{name}', the image member is '{facts.image_name}'"
    digits = re.findall(r"\d+", posixpath.basename(facts.key))
    if "image_id" in rec and digits and facts.key.startswith("sa_") and \
            str(rec["image_id"]) != str(int(digits[-1])):
        return f"its json says image_id {rec['image_id']}, the key '{facts.key}' another"
    return None


def coco_problem(entry: dict, facts: ImageFacts) -> str | None:
    """Why a COCO `images[]` entry is not the ground truth of this image, or None."""
    sha = entry.get("samdata_sha256")
    if sha and facts.sha256 and sha != facts.sha256:
        return (f"the COCO file's image {entry.get('id')} ('{entry.get('file_name')}') has "
                f"other bytes (sha256 {sha[:12]}..., the image {facts.sha256[:12]}...)")
    return _size_problem(f"the COCO file's image {entry.get('id')}", entry.get("width"),
                         entry.get("height"), facts)


def label_problem(row: dict, facts: ImageFacts, what: str = "the label row") -> str | None:
    """Why a label (or embedding) row was not made from this image, or None."""
    sha = row.get("image_sha256")
    if sha and facts.sha256 and sha != facts.sha256:
        return (f"{what} was made from other bytes (sha256 {sha[:12]}..., the image at its "
                f"source_uri {facts.sha256[:12]}...)")
    return _size_problem(what, row.get("width"), row.get("height"), facts)


def refuse(problems: Iterable[tuple[str, str]], what: str) -> None:
    """Raise GroundTruthMismatch when there is any (where, problem) pair, naming the first
    three and the count; `what` says what was compared ("the ground truth and the images")."""
    problems = list(problems)
    if not problems:
        return
    first = "; ".join(f"{where}: {p}" for where, p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise GroundTruthMismatch(f"{what} do not belong together in {len(problems)} image(s): "
                              f"{first}{more}")
