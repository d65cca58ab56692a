"""Resizing for validation and for the training cache.

Validation/test images only get ``stretch`` (plain resize to size x size) or ``letterbox``
(long side to size, aspect kept, centred on a gray square). Both report the scale and pad
that map output pixels back: x_orig = (x - pad_x) / scale_x.
"""

from __future__ import annotations

import cv2
import numpy as np

from .geometric import PAD_VALUE
from .targets import Targets


def _interpolation(src_w: int, dst_w: int) -> int:
    # area averaging when shrinking (no aliasing), bilinear when enlarging
    return cv2.INTER_AREA if dst_w < src_w else cv2.INTER_LINEAR


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    return cv2.resize(img, (width, height), interpolation=_interpolation(w, width))


def limit_long_side(img: np.ndarray, size: int) -> np.ndarray:
    """Shrink so the long side is ``size`` (never enlarge): what the training cache keeps."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    if r >= 1:
        return img
    return resize_image(img, max(1, round(w * r)), max(1, round(h * r)))


def scale_targets(targets: Targets, sx: float, sy: float, px: float = 0.0, py: float = 0.0) -> Targets:
    b = targets.boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([px, py, px, py], np.float32)
    return targets.mapped(np.array([[sx, 0, px], [0, sy, py], [0, 0, 1]], np.float64), b)


def stretch(img: np.ndarray, targets: Targets, size: int):
    """Plain resize to size x size. Returns (image, targets, (sx, sy), (px, py))."""
    h, w = img.shape[:2]
    sx, sy = size / w, size / h
    return resize_image(img, size, size), scale_targets(targets, sx, sy), (sx, sy), (0, 0)


def letterbox(img: np.ndarray, targets: Targets, size: int):
    """Long side to ``size``, aspect kept, centred on a gray square. Same returns as stretch."""
    h, w = img.shape[:2]
    r = size / max(h, w)
    nw, nh = min(size, max(1, round(w * r))), min(size, max(1, round(h * r)))
    px, py = (size - nw) // 2, (size - nh) // 2
    resized = resize_image(img, nw, nh)
    out = cv2.copyMakeBorder(
        resized, py, size - nh - py, px, size - nw - px, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    sx, sy = nw / w, nh / h
    return out, scale_targets(targets, sx, sy, px, py), (sx, sy), (px, py)


def resize_for_eval(img: np.ndarray, targets: Targets, size: int, mode: str):
    if mode == "stretch":
        return stretch(img, targets, size)
    if mode == "letterbox":
        return letterbox(img, targets, size)
    raise ValueError(f"unknown resize_mode {mode!r}; allowed: 'stretch', 'letterbox'")
