"""Decode any image a user may have into RGB uint8 [H, W, 3], as it is displayed.

The EXIF orientation rule: an image is always used the way a viewer displays it, i.e. with
its EXIF orientation tag applied. Annotation tools (CVAT, LabelImg, Label Studio, Roboflow)
show the rotated image, so the boxes a user drew are in displayed pixels; ``image_size``
reports the displayed (width, height) (swapped for orientations 5-8) and ``read_image``
returns the displayed pixels, so boxes and pixels agree without any conversion.

OpenCV decodes once with IMREAD_UNCHANGED (which never applies the tag, whatever the
OpenCV version) and the orientation is applied here, so the result does not depend on the
OpenCV build. Grayscale, 16-bit and RGBA inputs are converted; anything unreadable raises
``ImageReadError`` naming the file and the reason.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# OpenCV's own thread pool does not survive fork(): a DataLoader worker forked after the pool
# started can deadlock in its first cv2 call. Parallelism comes from the loader's workers.
cv2.setNumThreads(0)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

_EXIF_ORIENTATION = 0x0112
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"
_TAIL_BYTES = 4096  # end markers are searched for in this many trailing bytes


class ImageReadError(OSError):
    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] with EXIF orientation applied."""
    return read_image_for_size(path, None)[0]


def read_image_for_size(path: str | Path, long_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(RGB uint8 image, displayed (height, width) of the original) for use at ``long_side``.

    A JPEG whose long side is at least twice ``long_side`` is decoded at 1/2, 1/4 or 1/8
    scale by the decoder itself (DCT scaling costs a fraction of a full decode), never below
    ``long_side``; the caller still resizes to the exact size. Everything else (and any image
    when ``long_side`` is None) is decoded at full size, as ``read_image`` does.
    """
    p = Path(path)
    buf = _read_bytes(p)
    orientation, stored = _orientation_and_size(buf)
    factor = 1
    if long_side is not None and stored is not None and buf[:2].tobytes() == b"\xff\xd8":
        while factor < 8 and max(stored) / (2 * factor) >= long_side:
            factor *= 2
    if factor == 1:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    else:
        img = cv2.imdecode(buf, _REDUCED_COLOR[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageReadError(p, "not a decodable image (corrupt or wrong format)")
    img = apply_orientation(_to_rgb8(p, img), orientation)
    if factor == 1:
        return img, img.shape[:2]
    w, h = stored
    return img, ((w, h) if orientation in (5, 6, 7, 8) else (h, w))


_REDUCED_COLOR = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _orientation_and_size(buf: np.ndarray) -> tuple[int, tuple[int, int] | None]:
    """(EXIF orientation, stored (width, height)) from the header; (1, None) if unreadable."""
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            return _exif_orientation(im), im.size
    except Exception:  # no or broken header/EXIF: stored orientation is the displayed one,
        return 1, None  # and the decoder judges the file


def _read_bytes(p: Path) -> np.ndarray:
    try:
        size = p.stat().st_size
    except OSError:
        raise ImageReadError(p, "file not found") from None
    if size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    return np.fromfile(str(p), dtype=np.uint8)


def _to_rgb8(p: Path, img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    raise ImageReadError(p, f"unsupported channel count {img.shape[2]}")


def _exif_orientation(im: Image.Image) -> int:
    if im.format == "PNG":
        # Pillow's PNG getexif() decodes the whole image to look past the pixel data; an eXIf
        # chunk belongs before it, where the header read has already found it
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION, 1))
    return int(im.getexif().get(_EXIF_ORIENTATION, 1))


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into displayed pixels for an EXIF orientation value (1..8)."""
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = img.swapaxes(0, 1)
    elif orientation == 6:
        out = img.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        out = img.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        out = img.swapaxes(0, 1)[::-1]
    else:
        return img
    return np.ascontiguousarray(out)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed, read from the header only (no full decode)."""
    return _header(Path(path))[0]


def probe_image(path: str | Path) -> tuple[int, int]:
    """``image_size`` plus a cheap completeness check; raises ImageReadError when damaged.

    A JPEG or PNG cut short (an interrupted copy or download) still has a valid header, so
    the header alone cannot tell. Its end marker is missing, though: only then is the file
    fully decoded to decide (files with data appended after the marker decode fine).
    """
    p = Path(path)
    size, fmt = _header(p)
    marker = {"JPEG": _JPEG_EOI, "MPO": _JPEG_EOI, "PNG": _PNG_IEND}.get(fmt)
    if marker is None:
        return size
    with open(p, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - _TAIL_BYTES))
        tail = f.read()
    if marker not in tail:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception as e:
            raise ImageReadError(
                p, f"truncated or corrupt {fmt}: no end marker and decoding fails ({e})"
            ) from None
    return size


def _header(p: Path) -> tuple[tuple[int, int], str]:
    """((width, height) as displayed, PIL format name) from the file header."""
    try:
        with Image.open(p) as im:
            w, h = im.size
            orientation = _exif_orientation(im)
            fmt = im.format or ""
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except UnidentifiedImageError:
        if p.exists() and p.stat().st_size == 0:
            raise ImageReadError(p, "empty file (0 bytes)") from None
        raise ImageReadError(p, "not an image (content is no known image format)") from None
    except Exception as e:  # PIL raises many types for damaged headers
        raise ImageReadError(p, f"damaged image header ({type(e).__name__}: {e})") from None
    return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)), fmt
