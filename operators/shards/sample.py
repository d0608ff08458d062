"""A synthetic corpus in the SA-1B tar-shard format, for demos and tests.

Each shard `sa_NNNNNN.tar` holds `sa_<id>.jpg` then `sa_<id>.json` per image, in id order. An
image is a smooth colour gradient with 1-4 flat-coloured rectangles and ellipses drawn on it, in
colours distinct from each other and from the background. The json follows the SA-1B annotation
format, with one annotation per shape whose COCO RLE is the exact visible mask of that shape
(later shapes occlude earlier ones; a shape hidden entirely gets no annotation) and, when asked
(`background`), a last one for the background: what no shape covers, a region as SA-1B
annotates "stuff" (so that every point of the image belongs to some mask).

Output is deterministic: a shard's bytes depend only on `seed`, its index and the sizes asked for.
"""

from __future__ import annotations

import io
import json
import tarfile

import fsspec
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

IDS_PER_SHARD = 100_000  # image id = shard index * IDS_PER_SHARD + position in shard + 1
_MIN_COLOUR_DIST = 48  # least max-channel difference between a shape's colour and the others


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """float HxWx3 in [0, 255]: a linear gradient between two random colours along a random
    direction; also the float 9x3 colours sampled along it (for keeping shapes distinct)."""
    c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.cos(angle) * xx / max(w - 1, 1) + np.sin(angle) * yy / max(h - 1, 1)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    img = c0 + (c1 - c0) * t[..., None]
    samples = c0 + (c1 - c0) * np.linspace(0, 1, 9)[:, None]
    return img, samples


def _distinct_colour(rng: np.random.Generator, taken: list[np.ndarray]) -> np.ndarray:
    """uint8 (3,): a random colour at least _MIN_COLOUR_DIST (max over channels) from every
    float/uint8 (3,) colour in `taken`."""
    for _ in range(1000):
        c = rng.integers(0, 256, 3)
        if all(np.abs(c - t).max() >= _MIN_COLOUR_DIST for t in taken):
            return c.astype(np.uint8)
    raise RuntimeError("no distinct colour found")  # unreachable with <= 8 shapes + background


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """bool HxW: a random axis-aligned rectangle or ellipse, centred in the middle 60% of the
    image, spanning about 10-40% of each side (at least one pixel inside the image)."""
    ch = int(rng.integers(h // 5, h * 4 // 5 + 1))
    cw = int(rng.integers(w // 5, w * 4 // 5 + 1))
    rh = max(2, int(rng.integers(max(2, h // 10), max(3, h * 2 // 5))))
    rw = max(2, int(rng.integers(max(2, w // 10), max(3, w * 2 // 5))))
    ch, cw = min(ch, h - 1), min(cw, w - 1)
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        return (np.abs(yy - ch) <= rh // 2) & (np.abs(xx - cw) <= rw // 2)
    return ((yy - ch) / (rh / 2)) ** 2 + ((xx - cw) / (rw / 2)) ** 2 <= 1.0


def _make_image(rng: np.random.Generator, h: int, w: int, max_shapes: int = 4,
                texture: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 HxWx3 RGB image (gradient background + 1..max_shapes flat shapes in distinct
    colours, then seeded Gaussian grain of std `texture` levels over everything) and the bool
    HxW visible mask of each shape still visible, in drawing order."""
    img, taken = _background(rng, h, w)
    img = np.rint(img).astype(np.uint8)
    taken = list(taken)
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        m = _shape_mask(rng, h, w)
        colour = _distinct_colour(rng, taken)
        taken.append(colour)
        img[m] = colour
        masks = [prev & ~m for prev in masks]  # the new shape occludes the earlier ones
        masks.append(m)
    if texture > 0:  # grain: the masks stay exact, the image stops being flat
        grain = rng.normal(0.0, texture, (h, w, 1))
        img = np.clip(np.rint(img + grain), 0, 255).astype(np.uint8)
    return img, [m for m in masks if m.any()]


def _annotation(mask: np.ndarray, ann_id: int) -> dict:
    """SA-1B annotation dict for the non-empty bool HxW `mask` (COCO RLE with str counts)."""
    h, w = mask.shape
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    mid = len(ys) // 2  # a pixel of the mask (the middle one in raster order)
    return {
        "id": ann_id,
        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": int(mask_utils.area(rle)),
        "predicted_iou": 1.0,
        "stability_score": 1.0,
        "point_coords": [[float(xs[mid]), float(ys[mid])]],
        "crop_box": [0.0, 0.0, float(w), float(h)],
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append member `name` with bytes `data`, with fixed metadata (mtime 0) so that shards
    are byte-identical for a seed."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _shard_bytes(shard: int, images: int, seed: int, min_side: int, max_side: int,
                 max_shapes: int = 4, texture: float = 0.0, background: bool = False) -> bytes:
    """The uncompressed tar bytes of shard number `shard`."""
    rng = np.random.default_rng([seed, shard])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(images):
            image_id = shard * IDS_PER_SHARD + i + 1
            h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
            img, masks = _make_image(rng, h, w, max_shapes, texture)
            if background:
                rest = ~np.logical_or.reduce(masks) if masks else np.ones((h, w), bool)
                masks = masks + [rest] if rest.any() else masks
            jpg = io.BytesIO()
            Image.fromarray(img).save(jpg, "JPEG", quality=95)
            meta = {
                "image": {"image_id": image_id, "width": w, "height": h,
                          "file_name": f"sa_{image_id}.jpg"},
                "annotations": [_annotation(m, image_id * 100 + k) for k, m in enumerate(masks)],
            }
            _add(tar, f"sa_{image_id}.jpg", jpg.getvalue())
            _add(tar, f"sa_{image_id}.json", json.dumps(meta).encode())
    return buf.getvalue()


def write_sample_corpus(
    out: str,
    shards: int = 2,
    images_per_shard: int = 4,
    seed: int = 0,
    min_side: int = 48,
    max_side: int = 160,
    storage_options: dict | None = None,
    first_shard: int = 0,
    max_shapes: int = 4,
    texture: float = 0.0,
    background: bool = False,
) -> list[str]:
    """Write `shards` SA-1B-format tar shards to the folder or fsspec URL prefix `out`.

    Shards are `sa_{first_shard:06d}.tar` onwards, each with `images_per_shard` images whose
    sides are in [min_side, max_side]; image ids are `shard * 100000 + i + 1` (i from 0) and
    annotation ids `image_id * 100 + k`; each image has 1..`max_shapes` shapes and, with
    `texture` > 0, grain of that std (uint8 levels); with `background`, the background's mask
    is the image's last annotation. `storage_options` go to
    `fsspec.core.url_to_fs`.
    Returns the shard paths, sorted: full URLs for a URL `out`, plain paths for a local one.
    """
    if shards < 0 or first_shard < 0:
        raise ValueError(f"shards and first_shard must be >= 0, got {shards}, {first_shard}")
    if not 0 <= images_per_shard < IDS_PER_SHARD:
        raise ValueError(f"images_per_shard must be in [0, {IDS_PER_SHARD}), "
                         f"got {images_per_shard}")
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if not 1 <= max_shapes <= 8 or texture < 0:
        raise ValueError(f"expected 1 <= max_shapes <= 8 and texture >= 0, got {max_shapes}, "
                         f"{texture}")
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    written = []
    for s in range(first_shard, first_shard + shards):
        path = f"{root}/sa_{s:06d}.tar"
        fs.pipe_file(path, _shard_bytes(s, images_per_shard, seed, min_side, max_side,
                                        max_shapes, texture, background))
        written.append(fs.unstrip_protocol(path) if "://" in out else path)
    return sorted(written)
