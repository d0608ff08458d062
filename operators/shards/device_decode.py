"""Decoding JPEGs on the model actor's GPU (`input.decode: device`).

The read task then only reads the JPEG's header (size, EXIF orientation, the pixel limit) and
ships its bytes (`encoded`, ~0.5 MB for an SA-1B image instead of a 3 MB 1024x1024x3 input);
the actor decodes a batch with `torchvision.io.decode_jpeg(device="cuda")`, resizes each image
to the model's input_hw (bilinear, antialiased) and pads it to SxS on the device. The result is
close to, not bit-equal to, the CPU path (Pillow's resize). torchvision is imported here only,
and only when a batch holds encoded images: the CPU path never imports it (on a CPU build of
torch, torchvision from the registry does not import at all).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap height and width
JPEG_MAGIC = b"\xff\xd8\xff"


def device_decode_problem() -> str | None:
    """Why this worker cannot decode JPEGs on a GPU ("" parts joined), or None when it can."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a CPU torch makes torchvision fail in many ways
        return f"torchvision.io.decode_jpeg is not importable ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return f"CUDA is not available to torch {torch.__version__}"
    return None


def is_jpeg(data: bytes | None) -> bool:
    return bool(data) and data[:3] == JPEG_MAGIC


def header_hw(data: bytes, max_image_pixels: int) -> tuple[int, int]:
    """(H, W) of an image as displayed (EXIF orientation applied), from its header only.
    Raises ValueError when it is over max_image_pixels, OSError when its header is unreadable."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    if w * h > max_image_pixels:
        raise ValueError(f"{w}x{h} = {w * h} pixels, over max_image_pixels={max_image_pixels}")
    return (w, h) if orientation in TRANSPOSED else (h, w)


def decode_on_device(encoded: list[bytes], input_hws: np.ndarray, model: torch.nn.Module,
                     device: torch.device) -> tuple[torch.Tensor, list[str | None]]:
    """Encoded bytes of B images, int Bx2 input_hw each -> (uint8 Bx3xSxS on `device`, each
    resized to its input_hw and zero-padded at the bottom and right, S = model.image_size;
    per image None or why it could not be decoded: its slot stays zeros). JPEGs are decoded on
    the device; another format (rare in SA-1B-style corpora) on this host with the CPU path's
    decode and the model's own preprocessing."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from .decode import DecodeError, decode_image_for

    size = model.image_size
    out = torch.zeros((len(encoded), 3, size, size), dtype=torch.uint8, device=device)
    errors: list[str | None] = [None] * len(encoded)
    for i, data in enumerate(encoded):
        if not is_jpeg(data):
            try:
                image, _ = decode_image_for(data, max_image_pixels=2**62)  # header checked
            except DecodeError as e:
                errors[i] = str(e)
                continue
            padded, _ = model.prepare_image(image)  # SxSx3 uint8
            out[i] = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1).to(device)
            continue
        try:
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            image = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device,
                                apply_exif_orientation=True)  # 3xHxW uint8
        except Exception as e:  # noqa: BLE001 - one bad image is an error row
            errors[i] = f"device JPEG decode failed: {type(e).__name__}: {e}"
            continue
        h, w = (int(v) for v in input_hws[i])
        resized = torch.nn.functional.interpolate(
            image[None].float(), size=(h, w), mode="bilinear", antialias=True,
            align_corners=False)[0]
        out[i, :, :h, :w] = resized.round().clamp(0, 255).to(torch.uint8)
    return out, errors
