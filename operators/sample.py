"""A synthetic corpus in the SA-1B tar-shard format, for demos and tests.

Each shard `sa_NNNNNN.tar` holds `sa_<id>.jpg` then `sa_<id>.json` per image. The json follows
the SA-1B annotation format, with one annotation per drawn shape whose COCO RLE is the exact
visible mask of that shape (later shapes occlude earlier ones).
"""

from __future__ import annotations

import io
import json
import tarfile

import fsspec
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """bool HxW: a random axis-aligned rectangle or ellipse covering 5-40% of each side."""
    ch, cw = rng.integers(h // 5, h * 4 // 5 + 1), rng.integers(w // 5, w * 4 // 5 + 1)
    rh = max(2, int(rng.integers(max(2, h // 10), max(3, h * 2 // 5))))
    rw = max(2, int(rng.integers(max(2, w // 10), max(3, w * 2 // 5))))
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        return (np.abs(yy - ch) <= rh // 2) & (np.abs(xx - cw) <= rw // 2)
    return ((yy - ch) / (rh / 2)) ** 2 + ((xx - cw) / (rw / 2)) ** 2 <= 1.0


def make_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """uint8 HxWx3 image (gradient background + 1-4 flat shapes) and the bool HxW visible mask
    of each shape still visible."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    img = np.stack([(base[c] + 60 * xx / w + 60 * yy / h) % 256 for c in range(3)], axis=-1)
    img = img.astype(np.uint8)
    masks: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 5))):
        m = _shape_mask(rng, h, w)
        img[m] = rng.integers(0, 256, 3)
        masks = [prev & ~m for prev in masks]
        masks.append(m)
    return img, [m for m in masks if m.any()]


def annotation(mask: np.ndarray, ann_id: int, h: int, w: int) -> dict:
    """SA-1B annotation dict for bool HxW `mask`."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    ys, xs = np.nonzero(mask)
    mid = len(ys) // 2
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
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for a seed
    tar.addfile(info, io.BytesIO(data))


def write_sample_corpus(
    out: str,
    shards: int = 2,
    images_per_shard: int = 4,
    seed: int = 0,
    min_side: int = 48,
    max_side: int = 160,
    storage_options: dict | None = None,
    first_shard: int = 0,
) -> list[str]:
    """Write `shards` SA-1B-format tar shards to a folder or fsspec URL; return their paths."""
    fs, root = fsspec.core.url_to_fs(out, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    written = []
    for s in range(first_shard, first_shard + shards):
        rng = np.random.default_rng([seed, s])
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(images_per_shard):
                image_id = s * 100_000 + i + 1
                h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
                img, masks = make_image(rng, h, w)
                jpg = io.BytesIO()
                Image.fromarray(img).save(jpg, "JPEG", quality=95)
                meta = {
                    "image": {"image_id": image_id, "width": w, "height": h,
                              "file_name": f"sa_{image_id}.jpg"},
                    "annotations": [annotation(m, image_id * 100 + k, h, w)
                                    for k, m in enumerate(masks)],
                }
                _add(tar, f"sa_{image_id}.jpg", jpg.getvalue())
                _add(tar, f"sa_{image_id}.json", json.dumps(meta).encode())
        path = f"{root}/sa_{s:06d}.tar"
        fs.pipe_file(path, buf.getvalue())
        written.append(fs.unstrip_protocol(path) if "://" in out else path)
    return sorted(written)
