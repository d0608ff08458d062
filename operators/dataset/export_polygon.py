"""A mask as one polygon: the outer outline of its largest connected piece, traced along pixel
edges, for label formats that store polygons (YOLO segment).

The outline runs along the pixel edges (pixel (x, y) is the square [x, x+1] x [y, y+1]), not
through pixel centres as `cv2.findContours` gives it, so its shoelace area is exactly the
pixel count of the piece with its holes filled (a centre-line contour loses half a pixel along
every edge: 6% of a 32x32 square). Pieces are 8-connected (`cv2.connectedComponentsWithStats`),
and the outline keeps diagonally touching pixels of a piece together (it may touch itself at
such a corner). Vertices are kept only where the outline turns, as `cv2.CHAIN_APPROX_SIMPLE`
keeps them; a non-empty mask always gives at least 4 vertices.
"""

from __future__ import annotations

import numpy as np

# direction (dx, dy) on the corner grid (y down) -> offsets from the corner of the pixels
# right-ahead and left-ahead of the edge that leaves the corner in that direction; the trace
# keeps the piece on its right, so the outline runs clockwise on screen
_AHEAD = {
    (1, 0): ((0, 0), (0, -1)),
    (0, 1): ((-1, 0), (0, 0)),
    (-1, 0): ((-1, -1), (-1, 0)),
    (0, -1): ((0, -1), (-1, -1)),
}


def largest_piece(mask: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """bool/uint8 HxW mask -> (bool hxw crop of its largest 8-connected piece, the crop's x0,
    y0 in the mask, the number of pieces). The crop is empty (0x0) for an empty mask."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if count <= 1:
        return np.zeros((0, 0), bool), 0, 0, 0
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return labels[y:y + h, x:x + w] == best, x, y, count - 1


def outline(piece: np.ndarray) -> np.ndarray:
    """bool hxw, one 8-connected piece touching all four sides of the crop -> float Nx2 (x, y)
    corner points of its outer outline in crop coordinates, clockwise on screen, only where it
    turns (N >= 4)."""
    h, w = piece.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = piece
    grid, stride = padded.tobytes(), w + 2

    def fg(px: int, py: int) -> bool:  # pixel (px, py) of the padded crop
        return grid[py * stride + px] != 0

    # start: the top-left corner of the first pixel in raster order, heading east
    first = int(np.flatnonzero(padded)[0])
    start = (first % stride, first // stride)
    cx, cy = start
    d = (1, 0)
    points = []
    while True:
        for nd in ((d[1], -d[0]), d, (-d[1], d[0]), (-d[0], -d[1])):  # left, ahead, right, back
            (rx, ry), (lx, ly) = _AHEAD[nd]
            if fg(cx + rx, cy + ry) and not fg(cx + lx, cy + ly):
                break
        else:  # pragma: no cover - a corner of the outline always has a way on
            raise RuntimeError(f"expected an outline edge at corner {(cx, cy)}, got none")
        if nd != d or not points:
            points.append((cx, cy))
        d = nd
        cx, cy = cx + d[0], cy + d[1]
        if (cx, cy) == start:
            break
    return np.asarray(points, dtype=np.float64) - 1.0  # padded corner -> crop corner


def mask_polygon(mask: np.ndarray) -> tuple[np.ndarray | None, int]:
    """bool/uint8 HxW mask -> (float Nx2 (x, y) outline of its largest piece in mask pixel
    coordinates, or None for an empty mask; the number of pieces the mask has)."""
    piece, x0, y0, pieces = largest_piece(mask)
    if pieces == 0:
        return None, 0
    return outline(piece) + [x0, y0], pieces


def shoelace_area(points: np.ndarray) -> float:
    """The area enclosed by the float Nx2 polygon `points` (either orientation)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
