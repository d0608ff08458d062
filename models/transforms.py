"""Resize-longest-side geometry shared by the SAM-family models (CPU, numpy/PIL)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(H, W) after scaling the longer side to `target`, rounded half up as the official
    `ResizeLongestSide.get_preprocess_shape`."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB image: uint8 HxWx3 with H, W >= 1. Returns it unchanged."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy uint8 HxWx3 image, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 HxWx3 RGB image, got {image.dtype} of shape {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected a non-empty image, got shape {tuple(image.shape)}")
    return image


def resize_longest_side(image: np.ndarray, target: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 hxwx3 with max(h, w) == target, PIL bilinear (what torchvision's
    resize does to a PIL image, hence what the official SAM predictor feeds its encoder)."""
    check_image(image)
    h, w = longest_side_shape(image.shape[0], image.shape[1], target)
    if (h, w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_stretch(image: np.ndarray, target: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 target x target x3, aspect not kept, PIL bilinear."""
    check_image(image)
    if image.shape[:2] == (target, target):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((target, target), Image.BILINEAR))


def pad_bottom_right(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 hxwx3 (h, w <= size) -> uint8 size x size x3, zeros bottom and right."""
    h, w = image.shape[:2]
    if h > size or w > size:
        raise ValueError(f"expected an image of at most {size}x{size}, got {h}x{w}")
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:h, :w] = image
    return out
