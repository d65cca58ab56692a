"""Mosaic of four images with a random affine, drawn straight into the output canvas.

The picture is the YOLO one: four images around a random centre of a virtual 2s x 2s
canvas, then a random affine that brings the canvas down to s x s. Here the virtual canvas
is never allocated: each tile's placement and the affine are composed into one matrix and
the tile is drawn directly into the s x s output (one interpolation, no 2s^2 copy): by one
``cv2.resize`` of its visible window when the affine only scales and shifts (the default),
by ``cv2.warpAffine`` when it rotates or shears.
"""

from __future__ import annotations

import numpy as np

from .fit import fit_geometry
from .geometric import (
    PAD_VALUE,
    is_axis_aligned,
    resize_window_into,
    snap_axis_aligned,
    translation,
    warp_region_into,
    warp_targets,
)
from .targets import Targets


def tile_layout(
    sizes: list[tuple[int, int]], size: int, xc: int, yc: int
) -> list[tuple[tuple[int, int, int, int], tuple[int, int]]]:
    """For four tiles of (w, h) (in tile pixels after their base resize) around (xc, yc) in a
    2size x 2size canvas: each tile's visible crop (xyxy in tile pixels) and its offset."""
    out = []
    lim = 2 * size
    for k, (w, h) in enumerate(sizes):
        if k == 0:  # top-left: bottom-right corner at the centre
            a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        elif k == 1:  # top-right
            a = (xc, max(yc - h, 0), min(xc + w, lim), yc)
        elif k == 2:  # bottom-left
            a = (max(xc - w, 0), yc, xc, min(lim, yc + h))
        else:  # bottom-right
            a = (xc, yc, min(xc + w, lim), min(lim, yc + h))
        ox = a[0] if k in (1, 3) else xc - w  # tile x=0 sits here in the canvas
        oy = a[1] if k in (2, 3) else yc - h
        crop = (a[0] - ox, a[1] - oy, a[2] - ox, a[3] - oy)
        out.append((crop, (ox, oy)))
    return out


def mosaic4(
    tiles: list[tuple[np.ndarray, Targets]],
    size: int,
    center: tuple[int, int],
    affine: np.ndarray,
    resize_mode: str,
    min_size: float,
    min_visibility: float,
) -> tuple[np.ndarray, Targets]:
    """Four (image, targets) tiles -> (size x size image, targets).

    Each tile is first brought to the training scale by its base resize (``stretch``: size x
    size; ``letterbox``: long side = size, aspect kept), placed around ``center`` of the
    2size canvas, and mapped by ``affine`` (canvas -> output, 3x3).
    """
    if len(tiles) != 4:
        raise ValueError(f"mosaic needs 4 tiles, got {len(tiles)}")
    if resize_mode not in ("stretch", "letterbox"):
        raise ValueError(f"unknown resize_mode {resize_mode!r}; allowed: 'stretch', 'letterbox'")
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    base = []
    for img, _ in tiles:
        h, w = img.shape[:2]
        fit = fit_geometry(w, h, size, resize_mode)  # the geometry validation uses
        base.append((np.diag([*fit.scale, 1.0]), fit.resized))
    layout = tile_layout([b[1] for b in base], size, *center)
    aligned = is_axis_aligned(affine)
    parts = []
    for (img, targets), (scale, _), (crop, offset) in zip(tiles, base, layout):
        m = affine @ translation(*offset) @ scale
        # the crop in tile pixels, back in source pixels (outward-rounded to whole pixels)
        sx, sy = scale[0, 0], scale[1, 1]
        h, w = img.shape[:2]
        src_region = (
            int(np.clip(np.floor(crop[0] / sx + 1e-6), 0, w)),
            int(np.clip(np.floor(crop[1] / sy + 1e-6), 0, h)),
            int(np.clip(np.ceil(crop[2] / sx - 1e-6), 0, w)),
            int(np.clip(np.ceil(crop[3] / sy - 1e-6), 0, h)),
        )
        if aligned:
            # the crop's edges in the output, from whole canvas coordinates: a seam between
            # two tiles gets the same number from both, so they meet without a gap
            cx1, cy1, cx2, cy2 = (c + o for c, o in zip(crop, offset + offset))
            edges = (affine[0, 0] * cx1 + affine[0, 2], affine[1, 1] * cy1 + affine[1, 2],
                     affine[0, 0] * cx2 + affine[0, 2], affine[1, 1] * cy2 + affine[1, 2])
            placed = snap_axis_aligned(m, src_region, size, size, edges)
            if placed is None:
                parts.append(targets.select(np.zeros(len(targets), bool)))
                continue
            window, rect, m = placed
            resize_window_into(canvas, img, window, rect)
            parts.append(warp_targets(targets, m, size, size, min_size, min_visibility, window))
            continue
        warp_region_into(canvas, img, m, src_region)
        region = tuple(c / s for c, s in zip(crop, (sx, sy, sx, sy)))
        parts.append(warp_targets(targets, m, size, size, min_size, min_visibility, region))
    return canvas, Targets.concat(parts)
