"""Images -> model input, and boxes back to original-image pixels.

The resizing is the validation pipeline's own (``detforge.data.augment.resize``), so a model
sees at inference exactly what it was scored on: ``stretch`` (plain resize to the square) or
``letterbox`` (long side to the size, centred on gray). ``cut_padding`` keeps letterbox's scale
but pads only up to the next multiple of the stride (640x480 stays 640x480 instead of 640x640):
less compute, same object scale, for backends that take any input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detforge.data.augment.fit import boxes_to_original as fit_boxes_to_original
from detforge.data.augment.resize import letterbox, resize_for_eval
from detforge.data.augment.targets import Targets


@dataclass(frozen=True)
class Placement:
    """Where the original image sits in the model input: x_in = x_orig * scale + pad."""

    scale: tuple[float, float]  # (sx, sy)
    pad: tuple[float, float]  # (px, py)
    orig_size: tuple[int, int]  # (width, height)


def check_image(img: np.ndarray, where: str = "image") -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", type(img).__name__)
        raise ValueError(f"{where}: expected an RGB array [H, W, 3], got {shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 pixels 0..255, got {img.dtype}")
    if min(img.shape[:2]) < 1:
        raise ValueError(f"{where}: empty image {img.shape}")
    return img


def cut_padding_letterbox(img: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, Placement]:
    """Letterbox scale, padded to the smallest stride multiple (centred, like the square)."""
    h, w = img.shape[:2]
    out, _, scale, pad = letterbox(img, Targets.empty(), size, stride=stride)
    return out, Placement((float(scale[0]), float(scale[1])), (float(pad[0]), float(pad[1])), (w, h))


def fit_image(img: np.ndarray, size: int, mode: str, cut_padding: bool = False, stride: int = 32) -> tuple[np.ndarray, Placement]:
    """RGB uint8 [H, W, 3] -> (resized RGB uint8, placement)."""
    h, w = img.shape[:2]
    if cut_padding:
        if mode != "letterbox":
            raise ValueError("cut_padding=true applies to letterbox models only (this one uses resize_mode=stretch)")
        return cut_padding_letterbox(img, size, stride)
    out, _, scale, pad = resize_for_eval(img, Targets.empty(), size, mode)
    return out, Placement((float(scale[0]), float(scale[1])), (float(pad[0]), float(pad[1])), (w, h))


def to_input(images: list[np.ndarray], dtype=np.float32) -> np.ndarray:
    """Same-shape RGB uint8 images -> contiguous [B, 3, H, W] in 0..1. A division, not a product
    with 1/255: bit for bit what validation feeds the model (``x.float() / 255``)."""
    batch = np.stack(images).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=dtype) / dtype(255.0)


def boxes_to_original(boxes: np.ndarray, placement: Placement) -> np.ndarray:
    """Input-pixel xyxy -> original-image xyxy, clipped to the image."""
    return fit_boxes_to_original(boxes, placement.scale, placement.pad, *placement.orig_size)
