"""Image decoding on CPU workers: bytes -> RGB uint8 HxWx3, EXIF orientation applied."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000  # ~30x an SA-1B original; larger is a bomb or a mistake


class DecodeError(ValueError):
    """An image that cannot be used; the message becomes the row's `error`."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, WebP, ...) -> uint8 HxWx3 RGB.

    EXIF orientation is applied; grayscale, palette, CMYK and RGBA images become RGB (alpha
    dropped). Images over `max_pixels` are refused from their header, before decoding."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise DecodeError(
                    f"image of {w}x{h} = {w * h} pixels is over max_image_pixels={max_pixels}"
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError("not an image (no known image format)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb: {e}") from e
    except Exception as e:
        raise DecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e
