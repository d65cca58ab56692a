"""Colour and texture changes on uint8 RGB images; boxes are untouched.

Per-pixel arithmetic is done through 256-entry uint8 lookup tables (one ``cv2.LUT`` call
for all three channels), so nothing is converted to float before the tensor hand-off.
"""

from __future__ import annotations

import cv2
import numpy as np

_LEVELS = np.arange(256, dtype=np.float32)
STRIP_BYTES = 256 * 1024  # per strip of a multi-pass per-pixel change: fits a core's L2 cache


def _to_lut(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def hsv_lut(gain_h: float, gain_s: float, gain_v: float) -> np.ndarray:
    """(256, 1, 3) table for an image in OpenCV's full-range HSV (hue 0..255 wraps).

    Hue is shifted by ``gain_h`` of the colour circle, saturation and value multiplied by
    ``1 + gain_s`` / ``1 + gain_v``.
    """
    hue = np.mod(_LEVELS + gain_h * 256.0, 256.0)
    hue = np.where(np.rint(hue) >= 256, hue - 256, hue)
    sat = _LEVELS * (1 + gain_s)
    val = _LEVELS * (1 + gain_v)
    return np.stack([_to_lut(hue), _to_lut(sat), _to_lut(val)], -1).reshape(256, 1, 3)


# RGB -> YIQ (NTSC): Y is luma, (I, Q) the chroma plane in which hue is an angle
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def hsv_matrix(gain_h: float, gain_s: float, gain_v: float) -> np.ndarray:
    """3x3 float32 matrix on RGB pixels: hue turned by ``gain_h`` of the colour circle,
    saturation (chroma around the luma) times ``1 + gain_s``, value (all channels) times
    ``1 + gain_v``. All gains 0 give the identity.

    The same three controls as the HSV round trip, done as one linear map in YIQ space (as
    NVIDIA DALI's hsv operator does): one ``cv2.transform`` pass instead of two colour
    conversions and a table, and no 8-bit HSV quantisation (the round trip moves pixels
    even at zero gains). Hue turns in the HSV direction (red -> yellow -> green).
    """
    a = -2.0 * np.pi * gain_h  # I/Q axes turn the opposite way to HSV hue
    sat = 1.0 + gain_s
    chroma = np.array([[1.0, 0.0, 0.0],
                       [0.0, sat * np.cos(a), -sat * np.sin(a)],
                       [0.0, sat * np.sin(a), sat * np.cos(a)]])
    m = (1.0 + gain_v) * (_YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ)
    if not (gain_h or gain_s or gain_v):
        m = np.eye(3)
    return m.astype(np.float32)


def random_hsv(
    img: np.ndarray, rng: np.random.Generator, h: float, s: float, v: float, mode: str = "matrix",
    inplace: bool = False,
) -> np.ndarray:
    """Random hue / saturation / value change with gains drawn from ±``h``, ±``s``, ±``v``.

    ``mode``: "matrix" (default, :func:`hsv_matrix`) or "opencv", OpenCV's uint8 HSV round
    trip with tables (what the YOLO family does; about 10x slower). ``inplace``: the matrix
    mode may write into ``img`` (saves a fresh image-sized buffer and its page faults).
    """
    gains = rng.uniform(-1, 1, 3) * np.array([h, s, v])
    if not gains.any():
        return img
    if mode == "matrix":
        # rounds and saturates to 0..255; per pixel, so writing over the input is safe
        return cv2.transform(img, hsv_matrix(*gains), dst=img if inplace else None)
    if mode != "opencv":
        raise ValueError(f"unknown hsv_mode {mode!r}; allowed: 'matrix', 'opencv'")
    lut = hsv_lut(*gains)
    out = np.empty_like(img)
    # the three passes run strip by strip, each strip small enough to stay in the CPU cache
    # (every pass is per pixel, so the result is the same as whole-image passes)
    rows = max(1, STRIP_BYTES // max(1, img.shape[1] * img.shape[2]))
    for y in range(0, img.shape[0], rows):
        strip = out[y:y + rows]
        cv2.cvtColor(img[y:y + rows], cv2.COLOR_RGB2HSV_FULL, dst=strip)
        cv2.LUT(strip, lut, dst=strip)
        cv2.cvtColor(strip, cv2.COLOR_HSV2RGB_FULL, dst=strip)
    return out


def tone_lut(alpha: float = 1.0, beta: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """One table for contrast ``alpha``, brightness ``beta`` (levels) then gamma."""
    v = np.clip(_LEVELS * alpha + beta, 0, 255)
    v = 255.0 * (v / 255.0) ** gamma
    return _to_lut(v)


def apply_lut(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return cv2.LUT(img, lut)


def random_brightness_contrast(rng: np.random.Generator, limit: float = 0.2) -> tuple[float, float]:
    """(alpha, beta) with contrast 1 ± limit and brightness ± limit of the full range."""
    return 1 + rng.uniform(-limit, limit), rng.uniform(-limit, limit) * 255


def random_gamma(rng: np.random.Generator, low: float = 0.8, high: float = 1.2) -> float:
    return rng.uniform(low, high)


def random_blur(img: np.ndarray, rng: np.random.Generator, max_kernel: int = 7) -> np.ndarray:
    k = int(rng.choice(np.arange(3, max_kernel + 1, 2)))
    return cv2.blur(img, (k, k))


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, std_range=(3.0, 12.0)) -> np.ndarray:
    std = rng.uniform(*std_range)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= std
    return cv2.add(img, noise, dtype=cv2.CV_8U)  # rounds and saturates to 0..255


def to_gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
