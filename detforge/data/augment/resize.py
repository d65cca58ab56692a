"""Resizing for validation and for the training cache, and the one fit geometry.

Validation/test images only get ``stretch`` (plain resize to size x size) or ``letterbox``
(long side to size, aspect kept, centred on a gray square). ``fit_geometry`` is the only place
that computes where an image lands in the model input (scale, padding, rounding): training's
base resize, validation, predict and export all use it, and ``boxes_to_original`` is the only
way back: x_orig = (x - pad_x) / scale_x.
"""

from __future__ import annotations

import cv2
import numpy as np

from .fit import Fit, boxes_to_original, fit_geometry  # noqa: F401  (re-exported: one geometry)
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
    fit = fit_geometry(w, h, size, "stretch")
    return resize_image(img, size, size), scale_targets(targets, *fit.scale), fit.scale, fit.pad


def letterbox(img: np.ndarray, targets: Targets, size: int, stride: int | None = None):
    """Long side to ``size``, aspect kept, centred on a gray square (or, with ``stride``, on the
    smallest stride multiple). Same returns as stretch."""
    h, w = img.shape[:2]
    fit = fit_geometry(w, h, size, "letterbox", stride)
    (nw, nh), (px, py) = fit.resized, fit.pad
    out_w, out_h = (size, size) if stride is None else (-(-nw // stride) * stride, -(-nh // stride) * stride)
    resized = resize_image(img, nw, nh)
    out = cv2.copyMakeBorder(
        resized, py, out_h - nh - py, px, out_w - nw - px, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return out, scale_targets(targets, *fit.scale, px, py), fit.scale, fit.pad


def resize_for_eval(img: np.ndarray, targets: Targets, size: int, mode: str):
    if mode == "stretch":
        return stretch(img, targets, size)
    if mode == "letterbox":
        return letterbox(img, targets, size)
    raise ValueError(f"unknown resize_mode {mode!r}; allowed: 'stretch', 'letterbox'")
