"""Cutout: a few random rectangles filled with gray or black; hidden boxes are dropped.

Objects with outlines lose exactly the hidden pixels: each rectangle is subtracted from the
outline (``detforge.data.polygons.subtract_rect``, more rings, no rasterised mask), the box
becomes the bounds of what stays visible (as a COCO box bounds the visible segmentation), and
visibility is the outline's area left over its area before.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..polygons import outline_area, outline_bounds, subtract_rect
from .geometric import PAD_VALUE
from .targets import Targets, box_areas


def random_rectangles(
    rng: np.random.Generator, width: int, height: int, max_count: int = 4, size_range=(0.05, 0.3)
) -> list[tuple[int, int, int, int]]:
    """1..max_count integer xyxy rectangles, each side a ``size_range`` fraction of the image."""
    rects = []
    for _ in range(int(rng.integers(1, max_count + 1))):
        rw = max(1, round(rng.uniform(*size_range) * width))
        rh = max(1, round(rng.uniform(*size_range) * height))
        x1 = int(rng.integers(0, width - rw + 1))
        y1 = int(rng.integers(0, height - rh + 1))
        rects.append((x1, y1, x1 + rw, y1 + rh))
    return rects


def visible_fraction(boxes: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Fraction of each box's pixels not covered by the boolean ``hidden`` mask [H, W].

    Boxes are rounded to the pixel grid; an integral image makes each box O(1).
    """
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    h, w = hidden.shape
    integral = cv2.integral(hidden.astype(np.uint8))  # [h+1, w+1], int32 sums
    b = np.rint(boxes).astype(np.int64)
    x1, x2 = b[:, 0].clip(0, w), b[:, 2].clip(0, w)
    y1, y2 = b[:, 1].clip(0, h), b[:, 3].clip(0, h)
    covered = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    area = ((x2 - x1) * (y2 - y1)).astype(np.float64)
    return np.where(area > 0, 1.0 - covered / np.maximum(area, 1), 0.0).astype(np.float32)


def cutout(
    img: np.ndarray,
    targets: Targets,
    rects: list[tuple[int, int, int, int]],
    fill: int,
    min_visibility: float,
) -> tuple[np.ndarray, Targets]:
    """Fill ``rects`` with ``fill`` and drop boxes that keep < ``min_visibility`` visible."""
    out = img.copy()
    hidden = np.zeros(img.shape[:2], bool)
    for x1, y1, x2, y2 in rects:
        out[y1:y2, x1:x2] = fill
        hidden[y1:y2, x1:x2] = True
    if len(targets) == 0:
        return out, targets
    if targets.polygons is not None:
        return out, _cut_outlines(targets, rects, min_visibility)
    keep = visible_fraction(targets.boxes, hidden) >= min_visibility
    keep &= box_areas(targets.boxes) > 0
    return out, targets.select(keep)


def _cut_outlines(targets: Targets, rects, min_visibility: float) -> Targets:
    polygons, boxes = [], targets.boxes.copy()
    keep = np.zeros(len(targets), bool)
    for i, rings in enumerate(targets.polygons):
        before = outline_area(rings)
        for rect in rects:
            rings = subtract_rect(rings, rect)
        polygons.append(rings)
        if rings:
            boxes[i] = outline_bounds(rings)
            keep[i] = before > 0 and outline_area(rings) / before >= min_visibility
    return Targets(boxes, targets.labels, targets.weights, polygons).select(keep & (box_areas(boxes) > 0))


def random_cutout(
    img: np.ndarray, targets: Targets, rng: np.random.Generator, min_visibility: float
) -> tuple[np.ndarray, Targets]:
    h, w = img.shape[:2]
    rects = random_rectangles(rng, w, h)
    fill = PAD_VALUE if rng.random() < 0.5 else 0
    return cutout(img, targets, rects, fill, min_visibility)
