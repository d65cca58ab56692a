"""Decode any image a user may have into RGB uint8 [H, W, 3], as it is displayed.

OpenCV decodes (fastest here) and applies the EXIF orientation itself
(IMREAD_COLOR honours it), so pixels and the size reported by ``image_size`` agree with
what annotation tools show. Grayscale, 16-bit and RGBA inputs are converted; anything
unreadable raises ``ImageReadError`` naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class ImageReadError(OSError):
    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] with EXIF orientation applied."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise ImageReadError(p, "file not found") from None
    if size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    buf = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if img is None:
        raise ImageReadError(p, "not a decodable image (corrupt or wrong format)")
    # IMREAD_UNCHANGED skips EXIF rotation; apply it with the flag that honours it
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ImageReadError(p, f"unsupported channel count {img.shape[2]}")
    return _apply_exif(p, img)


def _apply_exif(p: Path, img: np.ndarray) -> np.ndarray:
    try:
        with Image.open(p) as im:
            orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return img
    rot = {3: cv2.ROTATE_180, 6: cv2.ROTATE_90_CLOCKWISE, 8: cv2.ROTATE_90_COUNTERCLOCKWISE}
    if orientation in (2, 4, 5, 7):  # mirrored forms are rare: let Pillow do them exactly
        with Image.open(p) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return cv2.rotate(img, rot[orientation]) if orientation in rot else img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, read from the header only (no full decode)."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except Exception as e:  # PIL raises many types for bad files
        if p.exists() and p.stat().st_size == 0:
            raise ImageReadError(p, "empty file (0 bytes)") from None
        raise ImageReadError(p, f"not a readable image ({type(e).__name__})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
