"""Geometric transforms on uint8 HWC images; boxes follow the pixels.

Affine maps are 3x3 float64 matrices from source pixels to output pixels so that a resize,
a mosaic placement and a random affine compose into one matrix and one ``cv2.warpAffine``
(a single interpolation, no intermediate canvas).
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from .fit import fit_geometry
from .targets import Targets, clip_boxes, keep_visible
from ..polygons import clip_outline, outline_area, outline_bounds, transform_rings

PAD_VALUE = 114  # gray used for every border, as in the YOLO family


def translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


def base_resize_matrix(width: int, height: int, size: int, mode: str) -> np.ndarray:
    """Source (width x height) -> square ``size`` output: ``stretch`` or centred ``letterbox``,
    with the geometry validation uses (``resize.fit_geometry``: whole-pixel size and padding)."""
    fit = fit_geometry(width, height, size, mode)
    return translation(*fit.pad) @ scaling(*fit.scale)


def random_affine_matrix(
    rng: np.random.Generator,
    center: tuple[float, float],
    out_size: int,
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    zoom: float = 1.0,
) -> np.ndarray:
    """Rotate/scale/shear about ``center`` and move it near the output centre (± translate);
    the drawn scale, uniform in [1 - scale, 1 + scale], is multiplied by ``zoom``."""
    c = translation(-center[0], -center[1])
    a = math.radians(rng.uniform(-degrees, degrees))
    s = zoom * rng.uniform(1 - scale, 1 + scale)
    rot = np.array([[s * math.cos(a), s * math.sin(a), 0], [-s * math.sin(a), s * math.cos(a), 0], [0, 0, 1]])
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    t = translation(
        rng.uniform(0.5 - translate, 0.5 + translate) * out_size,
        rng.uniform(0.5 - translate, 0.5 + translate) * out_size,
    )
    return t @ sh @ rot @ c


def affine_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Enclosing xyxy boxes of the four transformed corners of each box."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    x1, y1, x2, y2 = boxes.T
    xs = np.stack([x1, x2, x2, x1], 1)
    ys = np.stack([y1, y1, y2, y2], 1)
    tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], 1).astype(np.float32)


def warp_targets(
    targets: Targets,
    m: np.ndarray,
    out_w: int,
    out_h: int,
    min_size: float,
    min_visibility: float,
    region: tuple[float, float, float, float] | None = None,
) -> Targets:
    """Move boxes by ``m``, clip to the output, drop boxes too small or mostly outside.

    ``region`` (source xyxy) is the part of the source that is actually drawn (a mosaic
    tile's crop); boxes are clipped to it before the warp. Visibility is measured against
    the box warped without any clipping.
    """
    if len(targets) == 0:
        return targets
    if targets.polygons is not None:
        return warp_outlines(targets, m, out_w, out_h, min_size, min_visibility, region)
    reference = affine_boxes(targets.boxes, m)
    src = targets.boxes
    if region is not None:
        src = src.copy()
        src[:, [0, 2]] = src[:, [0, 2]].clip(region[0], region[2])
        src[:, [1, 3]] = src[:, [1, 3]].clip(region[1], region[3])
    moved = clip_boxes(affine_boxes(src, m), out_w, out_h)
    keep = keep_visible(moved, reference, min_size, min_visibility)
    return targets.with_boxes(moved).select(keep)


def warp_outlines(
    targets: Targets,
    m: np.ndarray,
    out_w: int,
    out_h: int,
    min_size: float,
    min_visibility: float,
    region: tuple[float, float, float, float] | None = None,
) -> Targets:
    """``warp_targets`` for objects with outlines: the outline is clipped to ``region`` (in
    the source), moved by ``m`` and clipped to the output, and the box becomes the bounds of
    what is left (tighter than the moved box's corners under rotation or shear, as in
    Ultralytics). Visibility is the outline's area left over its whole moved area; an object
    whose outline vanishes is dropped with its box.
    """
    det = abs(float(np.linalg.det(np.asarray(m, np.float64)[:2, :2])))
    out_rect = (0.0, 0.0, float(out_w), float(out_h))
    polygons, boxes, keep = [], np.zeros((len(targets), 4), np.float32), np.zeros(len(targets), bool)
    for i, rings in enumerate(targets.polygons):
        full = det * outline_area(rings)
        if region is not None:
            rings = clip_outline(rings, region)
        moved = clip_outline(transform_rings(rings, m), out_rect)
        polygons.append(moved)
        if not moved:
            continue
        boxes[i] = outline_bounds(moved)
        w, h = boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1]
        visible = outline_area(moved) / full if full > 0 else 1.0  # (a bow tie's shoelace area is 0)
        keep[i] = w >= min_size and h >= min_size and w > 0 and h > 0 and visible >= min_visibility
    return Targets(boxes, targets.labels, targets.weights, polygons).select(keep)


def warp_image(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Whole-image warp into a square ``size`` output padded with gray."""
    return cv2.warpAffine(
        img, m[:2], (size, size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3,
    )


def is_axis_aligned(m: np.ndarray) -> bool:
    """True when ``m`` only scales (by positive factors) and translates: no rotation, shear or flip."""
    return m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] > 0 and m[1, 1] > 0 and (m[2] == (0, 0, 1)).all()


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))


def snap_axis_aligned(
    m: np.ndarray,
    region: tuple[int, int, int, int],
    out_w: int,
    out_h: int,
    edges: tuple[float, float, float, float] | None = None,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int], np.ndarray] | None:
    """Whole-pixel placement of an axis-aligned map, so that ``cv2.resize`` can draw it.

    -> (source window, output rectangle, matrix), or None when nothing lands in the output.
    The window is ``region`` (xyxy, whole source pixels) cut to what ``m`` brings into the
    ``out_w x out_h`` output, rounded outwards; its corners go to the nearest whole output
    pixels, and the returned matrix maps the window exactly onto that rectangle (it differs
    from ``m`` by under a pixel of shift and under one pixel's worth of scale, and is the map
    the boxes must follow). ``edges`` are the output coordinates of the region's own edges
    when the caller knows them more exactly (mosaic seams: equal numbers for both tiles, so
    they meet without a gap).
    """
    x1, y1, x2, y2 = region
    a, b, c, d = m[0, 0], m[0, 2], m[1, 1], m[1, 2]
    u1, u2 = max(x1, math.floor(-b / a)), min(x2, math.ceil((out_w - b) / a))
    v1, v2 = max(y1, math.floor(-d / c)), min(y2, math.ceil((out_h - d) / c))
    if u2 <= u1 or v2 <= v1:
        return None
    if edges is None:
        edges = (a * x1 + b, c * y1 + d, a * x2 + b, c * y2 + d)
    ox1 = _round(edges[0] if u1 == x1 else a * u1 + b)
    oy1 = _round(edges[1] if v1 == y1 else c * v1 + d)
    ox2 = _round(edges[2] if u2 == x2 else a * u2 + b)
    oy2 = _round(edges[3] if v2 == y2 else c * v2 + d)
    if ox2 <= ox1 or oy2 <= oy1:
        return None
    sx, sy = (ox2 - ox1) / (u2 - u1), (oy2 - oy1) / (v2 - v1)
    snapped = np.array([[sx, 0.0, ox1 - sx * u1], [0.0, sy, oy1 - sy * v1], [0.0, 0.0, 1.0]])
    return (u1, v1, u2, v2), (ox1, oy1, ox2, oy2), snapped


def resize_window_into(
    canvas: np.ndarray, img: np.ndarray, window: tuple[int, int, int, int], rect: tuple[int, int, int, int]
) -> None:
    """``cv2.resize`` the source ``window`` onto the output ``rect`` (both xyxy, whole pixels)
    of ``canvas``; the part of ``rect`` outside the canvas is cut off.

    A separable resize reads each source row once and is several times faster than a general
    warp of the same output (see benchmarks/RESULTS.md); bilinear, like the warp it replaces.
    """
    u1, v1, u2, v2 = window
    x1, y1, x2, y2 = rect
    h, w = canvas.shape[:2]
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if cx2 <= cx1 or cy2 <= cy1:
        return
    src = img[v1:v2, u1:u2]
    size = (x2 - x1, y2 - y1)
    if (cx1, cy1, cx2, cy2) == (x1, y1, x2, y2):
        roi = canvas[y1:y2, x1:x2]
        out = cv2.resize(src, size, dst=roi, interpolation=cv2.INTER_LINEAR)
        if out is not roi and not np.shares_memory(out, roi):  # OpenCV chose a new buffer
            roi[...] = out
        return
    tmp = cv2.resize(src, size, dst=_scratch((size[1], size[0]) + img.shape[2:], img.dtype),
                     interpolation=cv2.INTER_LINEAR)
    canvas[cy1:cy2, cx1:cx2] = tmp[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]


def draw_image(img: np.ndarray, m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole image mapped by ``m`` into a gray ``size`` square -> (output, the map drawn).

    Scale-and-shift maps (the default augmentation: no rotation or shear) are snapped to whole
    output pixels and drawn with one resize; anything else goes through ``cv2.warpAffine``
    and ``m`` is returned unchanged. Boxes must follow the returned matrix.
    """
    if not is_axis_aligned(m):
        return warp_image(img, m, size), m
    out = np.full((size, size) + img.shape[2:], PAD_VALUE, img.dtype)
    h, w = img.shape[:2]
    placed = snap_axis_aligned(m, (0, 0, w, h), size, size)
    if placed is None:
        return out, m
    window, rect, snapped = placed
    resize_window_into(out, img, window, rect)
    return out, snapped


def warp_region_into(
    canvas: np.ndarray, img: np.ndarray, m: np.ndarray, region: tuple[int, int, int, int]
) -> None:
    """Warp the ``region`` (xyxy, source pixels) of ``img`` by ``m`` straight into ``canvas``.

    Only the output rectangle that the region can reach is computed, and pixels that map
    outside the region are left untouched (BORDER_TRANSPARENT), so four mosaic tiles can be
    drawn into the final canvas one after another.
    """
    x1, y1, x2, y2 = region
    if x2 <= x1 or y2 <= y1:
        return
    # BORDER_TRANSPARENT mixes samples that fall outside the source with what the canvas
    # already holds (the padding gray, at a tile edge); one replicated pixel around the region
    # keeps its edge pixels pure, so neighbouring tiles meet without a gray seam
    crop = cv2.copyMakeBorder(img[y1:y2, x1:x2], 1, 1, 1, 1, cv2.BORDER_REPLICATE,
                              dst=_scratch((y2 - y1 + 2, x2 - x1 + 2, img.shape[2]), img.dtype))
    corners = np.array([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]], np.float64)
    pts = corners @ m.T
    h, w = canvas.shape[:2]
    ox1 = max(int(math.floor(pts[:, 0].min())), 0)
    oy1 = max(int(math.floor(pts[:, 1].min())), 0)
    ox2 = min(int(math.ceil(pts[:, 0].max())), w)
    oy2 = min(int(math.ceil(pts[:, 1].max())), h)
    if ox2 <= ox1 or oy2 <= oy1:
        return
    # crop pixel (0, 0) is source pixel (x1 - 1, y1 - 1); output pixel (0, 0) is (ox1, oy1)
    local = translation(-ox1, -oy1) @ m @ translation(x1 - 1, y1 - 1)
    roi = canvas[oy1:oy2, ox1:ox2]
    # the padded crop reaches up to 1.5 px past the region; there the next tile drawn wins
    cv2.warpAffine(
        crop, local[:2], (roi.shape[1], roi.shape[0]), dst=roi,
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT,
    )


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A per-thread reusable buffer for short-lived intermediates: a fresh large array costs
    page faults on every touch, which on a busy machine outweigh the copy itself."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _SCRATCH.buf = np.empty(max(nbytes, 1 << 20), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def flip_lr(img: np.ndarray, targets: Targets) -> tuple[np.ndarray, Targets]:
    w = img.shape[1]
    b = targets.boxes.copy()
    b[:, [0, 2]] = w - targets.boxes[:, [2, 0]]
    return cv2.flip(img, 1), targets.mapped(np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]]), b)


def flip_ud(img: np.ndarray, targets: Targets) -> tuple[np.ndarray, Targets]:
    h = img.shape[0]
    b = targets.boxes.copy()
    b[:, [1, 3]] = h - targets.boxes[:, [3, 1]]
    return cv2.flip(img, 0), targets.mapped(np.array([[1.0, 0, 0], [0, -1, h], [0, 0, 1]]), b)


_ROTATE_CODES = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def rotate90(img: np.ndarray, targets: Targets, k: int) -> tuple[np.ndarray, Targets]:
    """Rotate by k * 90 degrees counter-clockwise (k in 1..3), as ``np.rot90`` does."""
    k %= 4
    if k == 0:
        return img, targets
    h, w = img.shape[:2]
    x1, y1, x2, y2 = targets.boxes.T
    if k == 1:  # (x, y) -> (y, w - x)
        b = np.stack([y1, w - x2, y2, w - x1], 1)
        m = [[0.0, 1, 0], [-1, 0, w]]
    elif k == 2:  # (x, y) -> (w - x, h - y)
        b = np.stack([w - x2, h - y2, w - x1, h - y1], 1)
        m = [[-1.0, 0, w], [0, -1, h]]
    else:  # (x, y) -> (h - y, x)
        b = np.stack([h - y2, x1, h - y1, x2], 1)
        m = [[0.0, -1, h], [1, 0, 0]]
    return cv2.rotate(img, _ROTATE_CODES[k]), targets.mapped(np.array(m + [[0, 0, 1]]), b.reshape(-1, 4))
