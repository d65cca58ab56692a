"""Boxes, class names and scores drawn onto an image (OpenCV, RGB in, RGB out)."""

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


def draw_detections(image: np.ndarray, dets: Detections, names: list[str], line_width: int | None = None) -> np.ndarray:
    """A copy of ``image`` (RGB uint8) with one labelled box per detection."""
    out = np.ascontiguousarray(image.copy())
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
