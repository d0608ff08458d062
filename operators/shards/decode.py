"""Image decoding on CPU workers: bytes -> RGB uint8 HxWx3, EXIF orientation applied.

The pixel limit is samdata's (`input.max_image_pixels`, checked from the header before any
decoding), not Pillow's own decompression-bomb limit (89.5 Mpx), which is switched off here so
that the setting is the limit. High bit depths are scaled to 8 bits as an image viewer shows
them (16-bit: /257; float in 0..1: x255); a float image outside 0..1 is an error naming its
range. A JPEG cut short (no end-of-image marker after its scan) is an error, not the gray
picture libjpeg would fill in.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # ~30x an SA-1B original; larger is a bomb or a mistake


# EXIF orientations that swap width and height (rotations by 90 or 270 degrees)
_TRANSPOSED = {5, 6, 7, 8}

# samdata applies input.max_image_pixels from the header itself (decode_image_for)
Image.MAX_IMAGE_PIXELS = None

# Pillow modes of more than 8 bits a channel, and how they become uint8
_WIDE_INT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class DecodeError(ValueError):
    """An image that cannot be used; the message becomes the row's `error`."""


def decode_image(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, WebP, ...) -> uint8 HxWx3 RGB.

    EXIF orientation is applied; grayscale, palette, CMYK and RGBA images become RGB (alpha
    dropped). Images over `max_image_pixels` are refused from their header, before decoding."""
    return decode_image_for(data, max_image_pixels)[0]


def decode_image_for(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                     draft_long_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Like `decode_image`, also returning the (oriented) original (h, w). With
    `draft_long_side`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) whose long
    side is still >= draft_long_side (JPEG "draft" mode: several times less decode work for a
    model that resizes anyway); the returned image is then smaller than the original."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_image_pixels:
                raise DecodeError(
                    f"image of {w}x{h} = {w * h} pixels is over max_image_pixels={max_image_pixels}"
                )
            if im.format == "JPEG":
                _check_jpeg_complete(data)
            orig_hw = (w, h) if im.getexif().get(0x0112, 1) in _TRANSPOSED else (h, w)
            if draft_long_side and im.format == "JPEG" and max(w, h) > draft_long_side:
                scale = draft_long_side / max(w, h)
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in _WIDE_INT or im.mode == "F":
                return _to_8bit(im), orig_hw
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im), orig_hw
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError("not an image (no known image format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb: {e}") from e
    except Exception as e:
        raise DecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e


def _check_jpeg_complete(data: bytes) -> None:
    """Raise DecodeError for a JPEG whose data stops before its end-of-image marker (FFD9
    after the last start-of-scan): libjpeg would fill the rest with gray and say nothing."""
    scan = data.rfind(b"\xff\xda")
    if scan < 0 or data.rfind(b"\xff\xd9") < scan:
        raise DecodeError(f"truncated JPEG: no end-of-image marker after the scan data "
                          f"({len(data)} bytes)")


def _to_8bit(im: Image.Image) -> np.ndarray:
    """A one-channel image of 16-bit, 32-bit integer or float pixels -> uint8 HxWx3: integers
    up to 65535 scaled by 1/257 (65535 -> 255), floats in 0..1 by 255. Raises DecodeError
    for integer values over 65535 or floats outside 0..1 (naming the mode and range)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0 or hi > 1:
            raise DecodeError(f"float image (mode F) with values in {lo:g}..{hi:g}: expected "
                              f"0..1 to scale to 8 bits")
        out = np.rint(a * 255)
    else:
        a = a.astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DecodeError(f"integer image (mode {im.mode}) with values in {lo}..{hi}: "
                              f"expected 0..65535 (16 bits)")
        out = np.rint(a / 257)
    gray = out.astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
