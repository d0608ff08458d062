"""Pictures of auto-labels: an image with its masks, boxes and prompt points, and a contact
sheet of several such pictures, the way people check labels by eye."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

_GOLDEN = 0.618033988749895  # hue step that keeps consecutive colours far apart


def palette(n: int, offset: float = 0.1) -> np.ndarray:
    """uint8 Nx3 saturated colours with well-separated hues."""
    hues = (offset + _GOLDEN * np.arange(n)) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
    return (np.array(rgb, dtype=np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)


def _edge(mask: np.ndarray) -> np.ndarray:
    """bool HxW: the pixels of `mask` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def draw_overlay(image: np.ndarray, annotations: list[dict], alpha: float = 0.5,
                 boxes: bool = True, points: bool = True) -> np.ndarray:
    """uint8 HxWx3 image + SA-1B annotations -> uint8 HxWx3 picture: each mask tinted in its
    own colour with a solid outline (largest first, so small masks stay visible), its XYWH box
    and its prompt point (a dot ringed in white)."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    order = sorted(range(len(annotations)), key=lambda i: -annotations[i]["area"])
    colours = palette(len(annotations))
    for rank, i in enumerate(order):
        seg = annotations[i]["segmentation"]
        if list(seg["size"]) != [h, w]:
            raise ValueError(f"expected masks of the image size {[h, w]}, got {seg['size']} "
                             f"(annotation {annotations[i].get('id', i)})")
        mask = mask_utils.decode({"size": list(seg["size"]), "counts": seg["counts"]}) > 0
        colour = colours[rank].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
        out[_edge(mask)] = colour
    picture = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    radius = max(2, round(min(h, w) / 150))
    for rank, i in enumerate(order):
        colour = tuple(int(c) for c in colours[rank])
        ann = annotations[i]
        if boxes:
            x, y, bw, bh = ann["bbox"]
            draw.rectangle([x, y, x + bw, y + bh], outline=colour, width=max(1, radius // 2))
        if points:
            for px, py in ann.get("point_coords") or []:
                draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour,
                             outline=(255, 255, 255), width=max(1, radius // 2))
    return np.asarray(picture)


def contact_sheet(tiles: list[tuple[np.ndarray, str]], columns: int = 4, tile: int = 320
                  ) -> np.ndarray:
    """(uint8 HxWx3 picture, caption) pairs -> uint8 sheet: each picture scaled to fit a
    `tile` x `tile` cell on dark grey, its caption underneath, `columns` cells a row."""
    if not tiles:
        raise ValueError("expected at least one picture for the contact sheet, got none")
    caption_h = 16
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    sheet = Image.new("RGB", (cols * tile, rows * (tile + caption_h)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for n, (picture, caption) in enumerate(tiles):
        im = Image.fromarray(picture)
        scale = tile / max(im.width, im.height)  # fit the cell, enlarging small images too
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.BILINEAR)
        x0, y0 = (n % columns) * tile, (n // columns) * (tile + caption_h)
        sheet.paste(im, (x0 + (tile - im.width) // 2, y0 + (tile - im.height) // 2))
        draw.text((x0 + 4, y0 + tile + 2), caption[:60], fill=(235, 235, 235))
    return np.asarray(sheet)


def dataset_sheet(dataset: str, count: int, storage_options: dict | None = None,
                  columns: int = 4, alpha: float = 0.5, boxes: bool = True,
                  points: bool = True) -> tuple[np.ndarray, int, int]:
    """The contact sheet of the first `count` ok images of a mask dataset (the output of
    `samdata autolabel`), each drawn with its masks (draw_overlay) from its source shard.
    Returns (uint8 sheet, images drawn, masks drawn)."""
    from .maskset import iter_rows, load_source_image

    tiles, masks = [], 0
    for row in iter_rows(dataset, storage_options):
        if row["status"] != "ok":
            continue
        anns = row["annotations"] or []
        picture = draw_overlay(load_source_image(row, storage_options), anns, alpha=alpha,
                               boxes=boxes, points=points)
        tiles.append((picture, f"{row['image_id']} {row['key']}: {len(anns)} masks"))
        masks += len(anns)
        if len(tiles) == count:
            break
    return contact_sheet(tiles, columns=columns), len(tiles), masks
