"""Instance outlines as polygons in absolute pixels: geometry, clipping, rasterising, tracing.

An object's outline is a list of rings (``float [K, 2]`` of x, y, K >= 3); the object covers
the union of its rings, as COCO's polygon segmentations do. Pixel ``(c, r)`` covers the square
``[c, c+1] x [r, r+1]`` (the convention of detforge's boxes and of COCO), and a ring covers a
pixel when the pixel's centre lies inside it (even-odd rule within one ring). A ring may hold
zero-width cuts (a path that goes out and comes back the same way): they cover no pixel, so
holes and several parts fit in one ring, as Ultralytics' YOLO-seg labels write them.

Everything is numpy (OpenCV only to trace a mask's contours): no shapely. Clipping to a
rectangle is one Sutherland–Hodgman pass per side, exact for a convex window; a concave ring
may come out with zero-width cuts along the window's edge, which cover no pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Ring = np.ndarray  # float [K, 2] (x, y), absolute pixels
Outline = list  # list[Ring]: one object, the union of its rings

# rings whose area is below this (px^2) are degenerate: clipped away to a sliver
MIN_RING_AREA = 1e-6
_FAR = 1e9  # "no bound" for the half-planes of a rectangle subtraction


def as_ring(points) -> np.ndarray:
    return np.asarray(points, np.float64).reshape(-1, 2)


def ring_signed_area(ring: np.ndarray) -> float:
    """Shoelace area; its sign tells the ring's turning direction."""
    x, y = ring[:, 0], ring[:, 1]
    if len(x) < 3:
        return 0.0
    # sum of x_i * y_{i+1} - x_{i+1} * y_i over the closed ring (slices: np.roll is slow here)
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]) + x[-1] * y[0] - x[0] * y[-1])


def outline_area(rings: Sequence[np.ndarray]) -> float:
    """Sum of the rings' absolute areas (exact for disjoint parts and for bridged holes)."""
    return float(sum(abs(ring_signed_area(r)) for r in rings))


def outline_bounds(rings: Sequence[np.ndarray]) -> np.ndarray:
    """xyxy bounds of all rings (float32 [4]); zeros when there is no ring."""
    if not rings:
        return np.zeros(4, np.float32)
    pts = np.concatenate([np.asarray(r).reshape(-1, 2) for r in rings])
    return np.array([*pts.min(0), *pts.max(0)], np.float32)


def box_ring(box) -> np.ndarray:
    """The outline of an xyxy box, for an object that has no outline of its own."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)


def transform_rings(rings: Sequence[np.ndarray], m: np.ndarray) -> list[np.ndarray]:
    """Rings mapped by the 3x3 (or 2x3) affine ``m``."""
    a = np.asarray(m, np.float64)[:2]
    return [np.asarray(r, np.float64) @ a[:, :2].T + a[:, 2] for r in rings]


# ---- clipping ---------------------------------------------------------------------------------
def _clip_half_plane(ring: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland–Hodgman against one axis-aligned half-plane (``coord <= bound`` or ``>=``).

    Vectorised: for each edge (previous -> current vertex) the output gets the crossing point
    when the edge crosses the line, then the current vertex when it is inside, in that order.
    """
    if len(ring) == 0:
        return ring
    c = ring[:, axis]
    inside = c <= bound if keep_below else c >= bound
    if inside.all():
        return ring
    if not inside.any():
        return ring[:0]
    prev = np.concatenate([ring[-1:], ring[:-1]])
    prev_inside = np.concatenate([inside[-1:], inside[:-1]])
    crossing = inside != prev_inside
    pc = prev[:, axis]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(crossing, (bound - pc) / (c - pc), 0.0)
    cross_pts = prev + t[:, None] * (ring - prev)
    cross_pts[:, axis] = bound  # exactly on the line
    candidates = np.stack([cross_pts, ring], 1)  # [K, 2 (crossing, vertex), 2 (x, y)]
    chosen = np.stack([crossing, inside], 1)
    return candidates[chosen]


def ring_is_flat(ring: np.ndarray) -> bool:
    """True when the ring encloses nothing: fewer than 3 points, or all on one line. (A zero
    shoelace area alone is not enough: a bow tie's two halves cancel.)"""
    r = np.asarray(ring, np.float64).reshape(-1, 2)
    if len(r) < 3:
        return True
    if abs(ring_signed_area(r)) > MIN_RING_AREA:
        return False
    return bool(np.linalg.svd(r - r.mean(0), compute_uv=False)[-1] <= 1e-6)


def clip_ring(ring: np.ndarray, rect: Sequence[float]) -> np.ndarray | None:
    """The part of ``ring`` inside the xyxy ``rect``; None when nothing of area is left."""
    x1, y1, x2, y2 = rect
    out = np.asarray(ring, np.float64)
    lo, hi = out.min(0), out.max(0)
    if hi[0] <= x1 or lo[0] >= x2 or hi[1] <= y1 or lo[1] >= y2:
        return None  # wholly outside
    if lo[0] >= x1 and lo[1] >= y1 and hi[0] <= x2 and hi[1] <= y2:
        return None if ring_is_flat(out) else out  # wholly inside
    for axis, bound, below in ((0, x1, False), (0, x2, True), (1, y1, False), (1, y2, True)):
        out = _clip_half_plane(out, axis, bound, below)
        if len(out) < 3:
            return None
    return None if ring_is_flat(out) else out


def clip_outline(rings: Sequence[np.ndarray], rect: Sequence[float]) -> list[np.ndarray]:
    return [c for r in rings if (c := clip_ring(r, rect)) is not None]


def subtract_rect(rings: Sequence[np.ndarray], rect: Sequence[float]) -> list[np.ndarray]:
    """The outline minus the xyxy ``rect`` (a cutout hole), exactly, as more rings.

    The plane outside the rectangle is four disjoint rectangles (left, right, and above /
    below it between its sides); each ring is clipped to each of them. With whole-pixel
    rectangles no pixel centre lies on a seam, so the result rasterises to the object's mask
    with exactly the pixels of ``rect`` removed.
    """
    x1, y1, x2, y2 = rect
    pieces = ((-_FAR, -_FAR, x1, _FAR), (x2, -_FAR, _FAR, _FAR), (x1, -_FAR, x2, y1), (x1, y2, x2, _FAR))
    out = []
    for r in rings:
        lo, hi = r.min(0), r.max(0)
        if hi[0] <= x1 or lo[0] >= x2 or hi[1] <= y1 or lo[1] >= y2:
            out.append(r)  # untouched by the hole
            continue
        out += [c for p in pieces if (c := clip_ring(r, p)) is not None]
    return out


# ---- rasterising ----------------------------------------------------------------------------
def rasterize(rings: Sequence[np.ndarray], height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Boolean [height, width] mask of the pixels whose centres lie inside any ring.

    A scan-line fill in numpy: every edge crossing a row's centre line toggles the pixels from
    the first centre right of the crossing onwards (an XOR prefix over the row), so each ring
    is filled even-odd; rings are OR-ed. Only the rows a ring spans are touched.
    """
    mask = np.zeros((height, width), bool) if out is None else out
    for ring in rings:
        _fill_ring(mask, np.asarray(ring, np.float64), height, width)
    return mask


def _fill_ring(mask: np.ndarray, ring: np.ndarray, height: int, width: int) -> None:
    if len(ring) < 3:
        return
    xa, ya = ring[:, 0], ring[:, 1]
    xb, yb = np.concatenate([xa[1:], xa[:1]]), np.concatenate([ya[1:], ya[:1]])
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    # rows whose centre r + 0.5 lies in [lo, hi): each vertex is counted once
    r0 = np.ceil(lo - 0.5).astype(np.int64)
    r1 = np.ceil(hi - 0.5).astype(np.int64)  # exclusive
    r0c, r1c = np.maximum(r0, 0), np.minimum(r1, height)
    counts = np.maximum(r1c - r0c, 0)
    total = int(counts.sum())
    if total == 0:
        return
    edge = np.repeat(np.arange(len(ring)), counts)
    first = np.repeat(r0c - np.cumsum(counts) + counts, counts)
    rows = first + np.arange(total)
    yc = rows + 0.5
    xa_e, ya_e, xb_e, yb_e = xa[edge], ya[edge], xb[edge], yb[edge]
    x = xa_e + (yc - ya_e) * (xb_e - xa_e) / (yb_e - ya_e)
    cols = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)  # first pixel whose centre >= x
    # only the window the ring spans: every row has an even number of toggles inside it
    top, bottom = int(rows.min()), int(rows.max()) + 1
    left, right = int(cols.min()), int(cols.max())
    span = right - left + 1
    toggles = np.bincount((rows - top) * span + (cols - left), minlength=(bottom - top) * span)
    parity = np.bitwise_xor.accumulate((toggles & 1).astype(np.uint8).reshape(bottom - top, span), axis=1)
    mask[top:bottom, left:right] |= parity[:, :-1].view(bool)


def rasterize_objects(outlines: Sequence[Sequence[np.ndarray]], height: int, width: int) -> np.ndarray:
    """uint8 [N, height, width] binary masks, one per object outline."""
    masks = np.zeros((len(outlines), height, width), np.uint8)
    for i, rings in enumerate(outlines):
        rasterize(rings, height, width, out=masks[i].view(bool))
    return masks


# ---- tracing a mask ---------------------------------------------------------------------------
def mask_to_rings(mask: np.ndarray) -> list[np.ndarray]:
    """Rings that rasterise back to ``mask`` (a binary [H, W] array), holes included.

    ``cv2.findContours`` traces the centres of the boundary pixels, which would leave half of
    every boundary pixel outside the polygon. Tracing the mask upsampled 2x instead gives a
    ring a quarter pixel inside the pixel edges: every pixel centre of the mask is inside it and
    every other centre outside, so the mask is recovered exactly. Holes (``RETR_CCOMP``) are
    joined to their outer ring by a zero-width cut, oriented so the shoelace area subtracts them.
    """
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return []
    ys, xs = np.nonzero(m)
    x0, y0 = int(xs.min()), int(ys.min())
    crop = m[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1].astype(np.uint8)
    up = cv2.copyMakeBorder(np.kron(crop, np.ones((2, 2), np.uint8)), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    offset = np.array([x0, y0], np.float64)
    # upsampled pixel q (after the 1-pixel border) has its centre at (q - 1 + 0.5) / 2 in the crop
    rings = [(c.reshape(-1, 2).astype(np.float64) - 0.5) / 2 + offset for c in contours]
    out = []
    for i, (_, _, _, parent) in enumerate(hierarchy):
        if parent >= 0:
            continue
        ring = rings[i]
        holes = [rings[j] for j, h in enumerate(hierarchy) if h[3] == i]
        for hole in holes:
            ring = join_rings(ring, hole, opposite=True)
        out.append(ring)
    return out


def join_rings(a: np.ndarray, b: np.ndarray, opposite: bool = False) -> np.ndarray:
    """One ring covering ``a`` and ``b`` under the even-odd rule: ``a`` from the vertex nearest
    to ``b``, round to it, across to ``b``'s nearest vertex, round ``b``, and back.

    The cut is travelled both ways, so it covers no pixel. ``b`` is oriented like ``a``
    (parts: areas add) or, with ``opposite``, against it (a hole: its area subtracts).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = (ring_signed_area(a) >= 0) == (ring_signed_area(b) >= 0)
    if same == opposite:
        b = b[::-1]
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    a_loop = np.roll(a, -i, axis=0)
    b_loop = np.roll(b, -j, axis=0)
    return np.concatenate([a_loop, a_loop[:1], b_loop, b_loop[:1]])


def join_outline(rings: Sequence[np.ndarray]) -> np.ndarray:
    """All rings of one object as a single ring (what a YOLO-seg line can hold)."""
    rings = [np.asarray(r, np.float64) for r in rings]
    if not rings:
        return np.zeros((0, 2))
    out = rings[0]
    for r in rings[1:]:
        out = join_rings(out, r)
    return out


# ---- checks -----------------------------------------------------------------------------------
def ring_self_crosses(ring: np.ndarray) -> bool:
    """True when two edges of the ring cross properly (each edge strictly through the other).

    Edges that only touch, share a vertex or overlap along a line (the zero-width cuts of
    joined rings) do not count. All edge pairs at once: O(K^2) memory, for checks, not
    for the training loop.
    """
    p = np.asarray(ring, np.float64)
    k = len(p)
    if k < 4:
        return False
    a, b = p, np.roll(p, -1, axis=0)

    def orient(p1, p2, q):
        return np.sign((p2[..., 0] - p1[..., 0]) * (q[..., 1] - p1[..., 1])
                       - (p2[..., 1] - p1[..., 1]) * (q[..., 0] - p1[..., 0]))

    a1, b1 = a[:, None], b[:, None]
    a2, b2 = a[None], b[None]
    o1, o2 = orient(a1, b1, a2), orient(a1, b1, b2)
    o3, o4 = orient(a2, b2, a1), orient(a2, b2, b1)
    proper = (o1 * o2 < 0) & (o3 * o4 < 0)
    return bool(np.triu(proper, 1).any())


def polygon_flat(ring: np.ndarray, ndigits: int = 2) -> list[float]:
    """A ring as COCO's flat ``[x1, y1, x2, y2, ...]`` list."""
    return [round(float(v), ndigits) for v in np.asarray(ring, np.float64).reshape(-1)]


def ring_from_flat(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, np.float64).reshape(-1, 2)


def points_finite(rings: Sequence[np.ndarray]) -> bool:
    return all(np.isfinite(np.asarray(r)).all() for r in rings)


def masks_to_original(masks: np.ndarray, scale: Sequence[float], pad: Sequence[float],
                      orig_size: Sequence[int]) -> np.ndarray:
    """Binary masks [K, H, W] in input-tensor pixels -> uint8 [K, h0, w0] in the original image.

    Undoes the resize / letterbox (x_in = x_orig * scale + pad): the input region that holds
    the image is resized back bilinearly and thresholded at one half, so a mask edge moves by
    under one input pixel.
    """
    masks = np.asarray(masks)
    h0, w0 = int(orig_size[0]), int(orig_size[1])
    out = np.zeros((len(masks), h0, w0), np.uint8)
    if len(masks) == 0:
        return out
    sx, sy = float(scale[0]), float(scale[1])
    px, py = float(pad[0]), float(pad[1])
    # output pixel centre (u + 0.5) maps to input coordinate (u + 0.5) * s + p
    m = np.array([[sx, 0, px - 0.5 + 0.5 * sx], [0, sy, py - 0.5 + 0.5 * sy]], np.float64)
    src = masks.astype(np.uint8) * 255
    for start in range(0, len(src), 256):  # OpenCV warps at most 512 channels at once
        chunk = np.ascontiguousarray(src[start:start + 256].transpose(1, 2, 0))
        warped = cv2.warpAffine(chunk, m, (w0, h0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        warped = warped.reshape(h0, w0, -1).transpose(2, 0, 1)
        out[start:start + len(warped)] = warped >= 128
    return out


def drop_repeated_vertices(ring: np.ndarray) -> np.ndarray:
    """The ring without vertices equal to the one before (they add nothing to its shape)."""
    r = np.asarray(ring, np.float64)
    if len(r) < 2:
        return r
    keep = np.any(r != np.roll(r, 1, axis=0), axis=1)
    return r[keep] if keep.any() else r[:1]


__all__ = [
    "MIN_RING_AREA", "as_ring", "box_ring", "clip_outline", "clip_ring", "join_outline", "join_rings",
    "mask_to_rings", "masks_to_original", "outline_area", "outline_bounds", "points_finite", "polygon_flat",
    "rasterize", "rasterize_objects", "ring_from_flat", "ring_is_flat", "ring_self_crosses", "ring_signed_area",
    "drop_repeated_vertices", "subtract_rect", "transform_rings",
]
