"""MixUp of two images and their boxes.

- ``overlay``: the YOLO-family form. Two images of the same (output) size are blended with a
  ratio ~ Beta(32, 32) (close to 0.5); the boxes of both are kept at full weight.
- ``geometry``: Zhang et al. 2019, "Bag of Freebies for Training Object Detection Neural
  Networks". Both images keep their own size and are placed at the top-left of a
  max(h1, h2) x max(w1, w2) canvas, so no object is resized or moved; the blend ratio is
  ~ Beta(1.5, 1.5) and each box carries the ratio of its image as a loss weight.
"""

from __future__ import annotations

import cv2
import numpy as np

from .targets import Targets

OVERLAY_BETA = (32.0, 32.0)
GEOMETRY_BETA = (1.5, 1.5)


def mixup_overlay(
    img1: np.ndarray, t1: Targets, img2: np.ndarray, t2: Targets, ratio: float
) -> tuple[np.ndarray, Targets]:
    if img1.shape != img2.shape:
        raise ValueError(f"overlay mixup needs equal shapes, got {img1.shape} and {img2.shape}")
    out = cv2.addWeighted(img1, ratio, img2, 1.0 - ratio, 0.0)
    return out, Targets.concat([t1, t2])


def mixup_geometry(
    img1: np.ndarray, t1: Targets, img2: np.ndarray, t2: Targets, ratio: float
) -> tuple[np.ndarray, Targets]:
    """Blend on a zero canvas as the paper does: a pixel covered by one image only gets that
    image times its ratio; where both overlap, ratio * img1 + (1 - ratio) * img2."""
    h1, w1 = img1.shape[:2]
    h2, w2 = img2.shape[:2]
    canvas = np.zeros((max(h1, h2), max(w1, w2), 3), np.uint8)
    canvas[:h1, :w1] = cv2.convertScaleAbs(img1, alpha=ratio)
    # add the second image's share on top (saturating uint8 add, no float canvas)
    canvas[:h2, :w2] = cv2.add(canvas[:h2, :w2], cv2.convertScaleAbs(img2, alpha=1.0 - ratio))
    weights = [t1.with_weights(t1.weights * ratio), t2.with_weights(t2.weights * (1.0 - ratio))]
    return canvas, Targets.concat(weights)
