"""Image decoding on CPU workers: bytes -> RGB uint8 HxWx3, EXIF orientation applied."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # ~30x an SA-1B original; larger is a bomb or a mistake


# EXIF orientations that swap width and height (rotations by 90 or 270 degrees)
_TRANSPOSED = {5, 6, 7, 8}


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
            orig_hw = (w, h) if im.getexif().get(0x0112, 1) in _TRANSPOSED else (h, w)
            if draft_long_side and im.format == "JPEG" and max(w, h) > draft_long_side:
                scale = draft_long_side / max(w, h)
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            im.load()
            im = ImageOps.exif_transpose(im)
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
