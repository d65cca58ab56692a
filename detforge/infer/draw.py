"""Boxes, class names, scores and instance masks drawn onto an image (OpenCV, RGB in, RGB out)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from detforge.records import Detections


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


MASK_ALPHA = 0.45  # opacity of a mask's fill: the object stays visible under its colour


def draw_masks(image: np.ndarray, masks: np.ndarray, labels, alpha: float = MASK_ALPHA) -> np.ndarray:
    """``image`` (RGB uint8, changed in place) with each binary mask [K, H, W] filled in its
    class colour at ``alpha`` and outlined; later masks are drawn over earlier ones."""
    for mask, label in zip(masks, labels):
        m = np.asarray(mask).astype(bool)
        if not m.any():
            continue
        color = np.array(class_color(int(label)), np.float32)
        image[m] = (image[m] * (1 - alpha) + color * alpha + 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return image


def draw_detections(image: np.ndarray, dets: Detections, names: list[str], line_width: int | None = None) -> np.ndarray:
    """A copy of ``image`` (RGB uint8) with one labelled box per detection (and its mask,
    when the detections carry masks)."""
    out = np.ascontiguousarray(image.copy())
    if dets.masks is not None:
        # lowest score first, so the most confident mask lies on top
        order = np.argsort(dets.scores, kind="stable")
        draw_masks(out, dets.masks[order], dets.labels[order])
    h, w = out.shape[:2]
    lw = line_width or max(1, round((h + w) / 2 * 0.003))
    font_scale = max(0.35, lw / 3)
    thickness = max(1, lw - 1)
    for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        color = class_color(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, lw, cv2.LINE_AA)
        name = names[int(label)] if 0 <= int(label) < len(names) else str(int(label))
        text = f"{name} {float(score):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        above = y1 - th - base - 2 >= 0  # label above the box unless that leaves the image
        ty1 = y1 - th - base - 2 if above else y1
        cv2.rectangle(out, (x1, ty1), (x1 + tw + 2, ty1 + th + base + 2), color, -1, cv2.LINE_AA)
        cv2.putText(out, text, (x1 + 1, ty1 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255),
                    thickness, cv2.LINE_AA)
    return out
