"""The one fit geometry: where an image lands in a square model input (scale, padding,
rounding to whole pixels), and the way back. Training's base resize, mosaic tiles, validation,
predict and export all use it, so train and eval geometry agree to the pixel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fit:
    """Where a (width x height) image lands in a square model input: x_in = x * scale + pad."""

    scale: tuple[float, float]  # (sx, sy): the resized size over the original size
    pad: tuple[int, int]  # (px, py): whole pixels of padding before the image
    resized: tuple[int, int]  # (w, h) of the image inside the input, whole pixels


def fit_geometry(width: int, height: int, size: int, mode: str, stride: int | None = None) -> Fit:
    """``stretch``: size x size; ``letterbox``: long side = size, the other rounded to whole
    pixels, centred. ``stride`` (letterbox only) pads to the next multiple of it instead of
    the full square (predict's ``cut_padding``)."""
    if mode == "stretch":
        return Fit((size / width, size / height), (0, 0), (size, size))
    if mode != "letterbox":
        raise ValueError(f"unknown resize_mode {mode!r}; allowed: 'stretch', 'letterbox'")
    r = size / max(width, height)
    nw, nh = min(size, max(1, round(width * r))), min(size, max(1, round(height * r)))
    out_w, out_h = (size, size) if stride is None else (-(-nw // stride) * stride, -(-nh // stride) * stride)
    return Fit((nw / width, nh / height), ((out_w - nw) // 2, (out_h - nh) // 2), (nw, nh))


def boxes_to_original(boxes: np.ndarray, scale, pad, width: int, height: int) -> np.ndarray:
    """Input-pixel xyxy -> original-image xyxy, clipped to the (width x height) image."""
    sx, sy = scale
    px, py = pad
    out = (np.asarray(boxes, np.float32).reshape(-1, 4) - np.array([px, py, px, py], np.float32)) / np.array(
        [sx, sy, sx, sy], np.float32)
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out
