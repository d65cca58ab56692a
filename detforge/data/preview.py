"""A grid of batch images with their boxes, class names and (for mask models) masks, for a
user to look at."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class (golden-ratio hue steps)."""
    hue = int((label * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 220, 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    img = image.detach().cpu()
    if img.dtype != torch.uint8:  # 0..1 floats
        img = (img.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(img.permute(1, 2, 0).numpy())


def draw_boxes(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, names: list[str]) -> np.ndarray:
    out = img.copy()
    scale = max(out.shape[:2]) / 640
    thick = max(1, round(2 * scale))
    for box, label in zip(boxes, labels):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = class_color(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = names[label] if 0 <= label < len(names) else str(int(label))
        font_scale = 0.5 * scale
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), color, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def _tint_masks(img: np.ndarray, masks: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    out = img.copy()
    for m, label in zip(masks.astype(bool), labels):
        out[m] = (out[m] * (1 - alpha) + np.array(class_color(int(label)), np.float32) * alpha + 0.5).astype(np.uint8)
    return out


def save_batch_preview(images: torch.Tensor, targets: list[dict], names: list[str], path,
                       max_images: int = 16) -> Path:
    """Draw up to ``max_images`` images [B, 3, S, S] with their boxes in a grid; write a PNG."""
    n = min(len(images), max_images)
    if n == 0:
        raise ValueError(f"{path}: no images to preview")
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = images.shape[-2:]
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i in range(n):
        img = _to_uint8_hwc(images[i])
        boxes = targets[i]["boxes"].detach().cpu().numpy().reshape(-1, 4)
        labels = targets[i]["labels"].detach().cpu().numpy().reshape(-1)
        if "masks" in targets[i]:  # a mask model's targets: each object's mask tinted in its class colour
            img = _tint_masks(img, targets[i]["masks"].detach().cpu().numpy(), labels)
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = draw_boxes(img, boxes, labels, names)
        cv2.rectangle(grid, (c * w, r * h), ((c + 1) * w - 1, (r + 1) * h - 1), (255, 255, 255), 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the preview image")
    return path
