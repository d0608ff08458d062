"""The FastSAM letterbox (models/yolov8_seg.letterbox) equals the official LetterBox byte for
byte: OpenCV's resize (INTER_LINEAR) then a constant border of 114, on real photographs
(scikit-image's) and on odd sizes. The reference here is written with OpenCV calls alone, as the
official preprocessing does."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from models.yolov8_seg import PAD_VALUE, letterbox, letterbox_geometry

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera"]  # camera is grey


def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph as uint8 HxWx3 RGB."""
    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def _official(image: np.ndarray, imgsz: int) -> np.ndarray:
    """The official letterboxed input: uint8 hxwx3 from cv2.resize and cv2.copyMakeBorder."""
    geom = letterbox_geometry(image.shape[:2], imgsz)
    h, w = geom.resized_hw
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    bottom, right = geom.input_hw[0] - geom.top - h, geom.input_hw[1] - geom.left - w
    return cv2.copyMakeBorder(image, geom.top, bottom, geom.left, right, cv2.BORDER_CONSTANT,
                              value=(PAD_VALUE,) * 3)


def _ours(image: np.ndarray, imgsz: int) -> np.ndarray:
    """Our letterbox as uint8 hxwx3 (its float32 levels must be integers 0..255)."""
    chw = torch.from_numpy(image).permute(2, 0, 1)  # a view, as segment_everything passes
    x = letterbox(chw, letterbox_geometry(image.shape[:2], imgsz))
    assert x.dtype == torch.float32 and torch.equal(x, x.round()) and 0 <= x.min() <= x.max() <= 255
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("imgsz", [1024, 640, 320])
@pytest.mark.parametrize("name", PHOTOS)
def test_photographs_byte_identical(name, imgsz):
    image = _photo(name)
    ours, official = _ours(image, imgsz), _official(image, imgsz)
    assert ours.shape == official.shape
    assert np.array_equal(ours, official)


@pytest.mark.parametrize(
    ("hw", "imgsz"),
    [
        ((1, 1), 64),  # upscaled 64 times
        ((7, 13), 320),
        ((333, 500), 1024),
        ((512, 256), 256),  # exact 2x downscale (OpenCV takes its area path)
        ((1000, 3), 320),  # 1 pixel wide after resizing
        ((2, 2000), 320),
        ((1023, 767), 1024),  # almost no resize
        ((4000, 3000), 1024),  # strong downscale: no antialiasing
    ],
)
def test_odd_sizes_byte_identical(hw, imgsz):
    image = np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    assert np.array_equal(_ours(image, imgsz), _official(image, imgsz))


def test_torch_bilinear_is_not_enough():
    """Why OpenCV: torch's bilinear (rounded) is off by one level on many values of a real
    photograph, which is enough to change detections."""
    image = _photo("coffee")
    geom = letterbox_geometry(image.shape[:2], 1024)
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    torch_resized = F.interpolate(x, size=geom.resized_hw, mode="bilinear", align_corners=False)
    torch_resized = torch_resized[0].round().permute(1, 2, 0).numpy()
    official = _official(image, 1024)[geom.top : geom.top + geom.resized_hw[0],
                                      geom.left : geom.left + geom.resized_hw[1]]
    differ = torch_resized != official
    assert differ.mean() > 0.05 and np.abs(torch_resized - official).max() == 1
    assert np.array_equal(_ours(image, 1024), _official(image, 1024))
