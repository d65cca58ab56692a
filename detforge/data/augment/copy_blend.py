"""Copy-Blend (DEIMv2, arXiv 2509.20787): objects cut from another training image are blended
into this one, so a sparse image carries more objects (more positives per step for one-to-one
matching) while the rest of the image, and so its statistics, stay as they were (unlike MixUp,
which blends whole images, or mosaic, which shrinks them).

Each donor box is pasted at its own size (both images come out of the same resize + affine
step, so object scales match) at a random place where it covers little of any box already
there. The cut takes a margin of background around the box and fades in across that margin
(no hard rectangle edge), and the object is blended at a ratio ~ U(0.6, 1) that also becomes
the box's loss weight.
"""

from __future__ import annotations

import numpy as np

from ..polygons import box_ring, clip_outline
from .targets import Targets, box_areas

BLEND_RANGE = (0.6, 1.0)
MARGIN = 0.15  # background cut around each side of a box, over which the paste fades in
MAX_COVER = 0.3  # largest share of a box (old or new) that a paste may cover
TRIES = 10


def _ramp(n: int, before: int, after: int) -> np.ndarray:
    """[n] float32: a cosine rise over the first ``before`` values, 1, a fall over the last ``after``."""
    x = np.ones(n, np.float32)
    for edge, sl in ((before, slice(0, before)), (after, slice(n - after, n))):
        if edge > 0:
            up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(edge, dtype=np.float32) + 0.5) / edge)
            x[sl] = np.minimum(x[sl], up if sl.start == 0 else up[::-1])
    return x


def feather_mask(h: int, w: int, margins: tuple[int, int, int, int]) -> np.ndarray:
    """[h, w] float32 in 0..1 for a cut with ``margins`` (left, top, right, bottom) of background
    around the box: 1 over the box, fading to ~0 across each margin."""
    left, top, right, bottom = margins
    return _ramp(h, top, bottom)[:, None] * _ramp(w, left, right)[None, :]


def _covers_too_much(box: np.ndarray, boxes: np.ndarray, limit: float) -> bool:
    if len(boxes) == 0:
        return False
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    inter = iw * ih
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    return bool(((inter > limit * box_areas(boxes).clip(1e-6)) | (inter > limit * area)).any())


def copy_blend(img: np.ndarray, targets: Targets, donor: np.ndarray, donor_targets: Targets,
               rng: np.random.Generator, max_objects: int = 4) -> tuple[np.ndarray, Targets]:
    """Blend up to ``max_objects`` of ``donor``'s boxes into ``img`` (both HxWx3 uint8, boxes in
    their own pixels); returns the new image (``img`` is changed in place) and targets."""
    h, w = img.shape[:2]
    dh, dw = donor.shape[:2]
    placed = targets.boxes.copy()
    new_boxes, new_labels, new_weights, new_outlines = [], [], [], []
    for i in rng.permutation(len(donor_targets))[:max_objects]:
        x1, y1, x2, y2 = np.round(donor_targets.boxes[i]).astype(int)
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, dw), min(y2, dh)
        bw, bh = x2 - x1, y2 - y1
        if bw < 2 or bh < 2:
            continue
        mx, my = int(round(MARGIN * bw)), int(round(MARGIN * bh))
        cx1, cy1, cx2, cy2 = max(x1 - mx, 0), max(y1 - my, 0), min(x2 + mx, dw), min(y2 + my, dh)
        cw, ch = cx2 - cx1, cy2 - cy1
        if cw > w or ch > h:
            continue
        for _ in range(TRIES):
            nx, ny = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = np.array([nx + x1 - cx1, ny + y1 - cy1, nx + x2 - cx1, ny + y2 - cy1], np.float32)
            if not _covers_too_much(box, placed, MAX_COVER):
                break
        else:
            continue
        ratio = float(rng.uniform(*BLEND_RANGE))
        alpha = (feather_mask(ch, cw, (x1 - cx1, y1 - cy1, cx2 - x2, cy2 - y2)) * ratio)[..., None]
        patch = donor[cy1:cy2, cx1:cx2].astype(np.float32)
        region = img[ny:ny + ch, nx:nx + cw].astype(np.float32)
        img[ny:ny + ch, nx:nx + cw] = np.clip(alpha * patch + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
        placed = np.concatenate([placed, box[None]])
        new_boxes.append(box)
        new_labels.append(donor_targets.labels[i])
        new_weights.append(donor_targets.weights[i] * ratio)
        if donor_targets.polygons is not None:  # the outline moves with its cut
            shift = np.array([nx - cx1, ny - cy1], np.float64)
            new_outlines.append([r + shift for r in clip_outline(donor_targets.polygons[i], (cx1, cy1, cx2, cy2))]
                                or [box_ring(box)])
    if not new_boxes:
        return img, targets
    pasted = Targets(np.stack(new_boxes), np.asarray(new_labels), np.asarray(new_weights, np.float32),
                     new_outlines if donor_targets.polygons is not None else None)
    return img, Targets.concat([targets, pasted])
