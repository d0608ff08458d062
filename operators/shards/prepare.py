"""CPU step of the embedding pipeline: shard -> decoded, resized, padded uint8 rows.

One call per piece of a shard (a Ray Data `flat_map`; a piece is the whole shard unless the
shard holds more than `input.images_per_task` samples, pieces.py). Every sample becomes a row
(`status` ok or error) and each piece ends with one end row (`is_end`) carrying its sample
count, so the writer and the driver can tell when a shard is complete. Row fields:
schema.PREPARED_DEFAULTS.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from models import MODEL_REGISTRY

from ..config import InputConfig, StorageConfig
from .decode import DecodeError, decode_image_for
from .device_decode import header_hw
from .piece import Piece
from .read import Sample, ShardEnd, image_id_from, iter_shard
from .resumable import StorageUnavailable
from .schema import item_shard, prepared_row

UNPADDED = ("original", "encoded")  # read modes whose error and end rows carry 1x1x3 pixels


@lru_cache(maxsize=4)
def model_skeleton(name: str) -> torch.nn.Module:
    """The model built on the meta device: its CPU preprocessing without any weights."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)}")
    with torch.device("meta"):
        return MODEL_REGISTRY[name]()


def input_dtype(model: torch.nn.Module) -> np.dtype:
    """dtype of the model's prepared input (uint8 for most; float32 where the official
    preprocessing resizes in float, e.g. EfficientSAM), probed once on a tiny image."""
    if "_input_dtype" not in model.__dict__:
        model._input_dtype = model.prepare_image(np.zeros((8, 8, 3), np.uint8))[0].dtype
    return model._input_dtype


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """A prepared input as uint8 for a JPEG: float inputs in 0..1 or 0..255 are rescaled."""
    if pixels.dtype == np.uint8:
        return pixels
    scale = 255.0 if pixels.size and float(pixels.max()) <= 1.0 else 1.0
    return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)


def _row(size: int, dtype: np.dtype = np.uint8, **values: Any) -> dict[str, Any]:
    """A prepared row whose placeholder pixels are zeros SxSx3 of `dtype`."""
    return prepared_row(pixels=np.zeros((size, size, 3), dtype), **values)


def prepare_sample(sample: Sample, shard: str, model: torch.nn.Module, max_image_pixels: int,
                   include_image: bool, mode: str = "padded", jpeg_draft: bool = False,
                   include_annotations: bool = False) -> dict[str, Any]:
    """One Sample -> one row with orig_hw, input_hw and "pixels": by `mode`, SxSx3 (the
    model's prepared input: resized, padded; uint8 or the model's float) or uint8 HxWx3 (the
    decoded original). Error rows carry zeros of the same dtype. jpeg_draft (padded mode):
    decode JPEGs at a reduced DCT scale no smaller than the model's input; orig_hw stays the
    original's. include_annotations: "annotations_json" holds the json's `annotations` as
    JSON text ("[]" when it has none, "" for a sample without json). mode "encoded"
    (input.decode device): no decoding here; "encoded" holds the image's bytes, orig_hw and
    input_hw come from its header, "pixels" is a 1x1x3 placeholder (device_decode.py)."""
    size = 1 if mode in UNPADDED else model.image_size
    dtype = np.uint8 if mode in UNPADDED else input_dtype(model)
    base = dict(shard=shard, key=sample.key, source_uri=sample.source_uri,
                image_sha256=hashlib.sha256(sample.image).hexdigest() if sample.image else "",
                image_id=image_id_from(sample.key, sample.meta) or -1)
    if include_annotations and sample.meta is not None:
        base["annotations_json"] = json.dumps(sample.meta.get("annotations") or [])
    if sample.error:
        return _row(size, dtype, status="error", error=sample.error, **base)
    if mode == "encoded":  # the model actor decodes it (on its GPU for a JPEG)
        try:
            orig_hw = header_hw(sample.image, max_image_pixels)
        except (ValueError, OSError) as e:
            return _row(size, dtype, status="error", error=f"{sample.image_name}: {e}", **base)
        return _row(size, dtype, orig_hw=np.array(orig_hw, np.int32),
                    input_hw=np.array(model.input_hw(orig_hw), np.int32),
                    encoded=sample.image, **base)
    draft = model.image_size if jpeg_draft and mode != "original" else None
    try:
        image, orig_hw = decode_image_for(sample.image, max_image_pixels=max_image_pixels,
                                          draft_long_side=draft)
    except DecodeError as e:
        return _row(size, dtype, status="error", error=f"{sample.image_name}: {e}", **base)
    if mode == "original":
        return prepared_row(orig_hw=np.array(image.shape[:2], np.int32),
                            input_hw=np.array(model.input_hw(image.shape[:2]), np.int32),
                            pixels=image, **base)
    padded, input_hw = model.prepare_image(image)  # what the encoder sees
    jpeg = b""
    if include_image:
        buf = io.BytesIO()
        Image.fromarray(_to_uint8(padded[: input_hw[0], : input_hw[1]])).save(
            buf, "JPEG", quality=95)
        jpeg = buf.getvalue()
    return prepared_row(orig_hw=np.array(orig_hw, np.int32), input_hw=np.array(input_hw, np.int32),
                        pixels=padded, image_jpeg=jpeg, **base)


def read_and_prepare(
    item: dict[str, Any],
    model_name: str,
    input_cfg: InputConfig,
    storage_options: dict | None = None,
    include_image: bool = False,
    mode: str = "padded",
    storage: StorageConfig | None = None,
    include_annotations: bool = False,
) -> Iterator[dict[str, Any]]:
    """Ray Data flat_map: {"shard", "url", "container", optional "skip_keys", "piece"} -> a
    row per sample of the shard (or of its piece), then an end row.

    model_name: model.name (its CPU preprocessing); input_cfg: the job's `input` section
    (format, max_image_pixels, jpeg_draft); storage: the `storage` section (retries).
    mode "padded": "pixels" is the model's SxSx3 input (embedding); "original": "pixels" is
    the decoded image uint8 HxWx3 at its own size (everything mode crops it); error and end
    rows then carry a 1x1x3 placeholder. Samples whose key is in skip_keys (already written
    by an earlier run) are read past but get no row; the end row still counts them.
    include_annotations: rows carry the json's annotations (see `prepare_sample`).

    Never raises for one shard's trouble (one shard must not abort the others): a shard that
    cannot be read ends with `shard_unavailable` set, and the driver leaves it uncommitted."""
    model = model_skeleton(model_name)
    shard = item_shard(item)
    piece = Piece.of_item(item)
    skip = frozenset(item.get("skip_keys") or ())
    if mode == "padded" and input_cfg.decode == "device":
        mode = "encoded"  # the model actor decodes (device_decode.py)
    size = 1 if mode in UNPADDED else model.image_size
    dtype = np.uint8 if mode in UNPADDED else input_dtype(model)
    if piece.unavailable:  # the header pass could not read the shard
        yield _row(size, dtype, shard=shard.name, status="end", is_end=True,
                   shard_unavailable=piece.unavailable, piece=piece.index)
        return
    try:
        for part in iter_shard(shard, storage_options, fmt=input_cfg.format, storage=storage,
                               piece=piece):
            if isinstance(part, ShardEnd):
                yield _row(size, dtype, shard=shard.name, status="end", is_end=True,
                           piece=piece.index,
                           shard_count=part.count, shard_error=part.error or "",
                           skipped_members=part.skipped_members,
                           member_counts=json.dumps(part.members, sort_keys=True))
            elif part.key not in skip:
                yield prepare_sample(part, shard.name, model, input_cfg.max_image_pixels,
                                     include_image, mode, input_cfg.jpeg_draft,
                                     include_annotations)
    except StorageUnavailable as e:
        yield _row(size, dtype, shard=shard.name, status="end", is_end=True,
                   shard_unavailable=str(e), piece=piece.index)
    except Exception as e:  # noqa: BLE001 - isolate the shard; the driver names it
        yield _row(size, dtype, shard=shard.name, status="end", is_end=True,
                   shard_unavailable=f"reading failed: {type(e).__name__}: {e}",
                   piece=piece.index)
