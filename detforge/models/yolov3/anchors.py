"""Anchors: the cfgs' defaults, fitting them to a dataset, and checking how well they fit.

Anchors are (w, h) in input pixels, sorted by area; with L levels the first A = n / L go to
the finest level (Darknet's ``mask``). The cfg anchors were clustered on COCO at 416 px, so
``anchors=default`` scales them by imgsz / 416 (objects grow with the input when images are
resized to imgsz). An explicit list is taken as pixels at imgsz, as a Darknet cfg's anchors
are pixels at its width. ``anchors=auto`` clusters the training boxes, resized to imgsz as the
data pipeline resizes them.

``fit_anchors``: k-means on box (w, h) with d = 1 - IoU, the IoU of two boxes sharing a centre
(Redmon & Farhadi 2017): Euclidean k-means would let large boxes dominate. Each run starts
from k-means++ seeds; the best of a few seeded runs (highest mean best-IoU) wins, so the
result is deterministic for a given input.

``best_possible_recall``: the fraction of boxes some anchor can take, with Ultralytics'
AutoAnchor rule (width and height both within a factor ``ratio_thr`` = 4 of the anchor's),
the figure users of YOLO tooling know; ``mean_best_iou`` is Darknet's ``calc_anchors`` figure.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

LOG = logging.getLogger("detforge")

REFERENCE_SIZE = 416
YOLOV3_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
YOLOV3_TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
# boxes smaller than this (px at imgsz) say nothing about shape and are left out of the fit
MIN_BOX_PX = 2.0
# below this best-possible recall the check suggests anchors=auto (Ultralytics' AutoAnchor bar)
BPR_WARN = 0.98
RATIO_THR = 4.0


def default_anchors(num: int, imgsz: int) -> np.ndarray:
    base = {9: YOLOV3_ANCHORS, 6: YOLOV3_TINY_ANCHORS}[num]
    return np.asarray(base, np.float32) * (imgsz / REFERENCE_SIZE)


def as_anchor_array(anchors: Sequence[float] | Sequence[Sequence[float]] | np.ndarray, num: int) -> np.ndarray:
    arr = np.asarray(anchors, np.float32).reshape(-1)
    if arr.size != 2 * num:
        raise ValueError(f"anchors: this model takes {num} anchors ({2 * num} numbers w1,h1,...), got {arr.size} numbers")
    arr = arr.reshape(num, 2)
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"anchors must be positive pixel sizes, got {arr.tolist()}")
    return arr[np.argsort(arr.prod(1), kind="stable")]


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes [N, 2] and anchors [K, 2] placed on a common centre -> [N, K]."""
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = wh[:, None].prod(-1) + anchors[None].prod(-1) - inter
    return inter / np.maximum(union, 1e-12)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    return float(wh_iou(wh, anchors).max(1).mean()) if len(wh) else 0.0


def best_possible_recall(wh: np.ndarray, anchors: np.ndarray, ratio_thr: float = RATIO_THR) -> float:
    """Fraction of boxes [N, 2] (px) with an anchor within ``ratio_thr`` in width and height."""
    if len(wh) == 0:
        return 0.0
    ratio = wh[:, None] / anchors[None]  # [N, K, 2]
    worst = np.minimum(ratio, 1 / ratio).min(-1)  # the worse of the two sides
    return float((worst.max(1) > 1 / ratio_thr).mean())


def _kmeans_iou(wh: np.ndarray, n: int, rng: np.random.Generator, iters: int = 300) -> np.ndarray:
    # k-means++ seeding with 1 - IoU as the distance
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, n):
        d = 1 - wh_iou(wh, np.asarray(centres)).max(1)
        p = d**2
        centres.append(wh[rng.choice(len(wh), p=p / p.sum())] if p.sum() > 0 else wh[rng.integers(len(wh))])
    centres = np.asarray(centres, np.float64)
    assign = None
    for _ in range(iters):
        new_assign = wh_iou(wh, centres).argmax(1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for k in range(n):
            members = wh[assign == k]
            # Darknet and the YOLO tools take the mean; an empty cluster keeps its centre
            if len(members):
                centres[k] = members.mean(0)
    return centres


def fit_anchors(wh: np.ndarray, n: int, imgsz: int, restarts: int = 5, seed: int = 0) -> np.ndarray:
    """k-means (1 - IoU) anchors for boxes ``wh`` [N, 2] given as fractions of the resized image
    side (0..1), at a square input of ``imgsz`` px -> [n, 2] px, sorted by area."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2) * imgsz
    wh = wh[(wh >= MIN_BOX_PX).all(1) & np.isfinite(wh).all(1)]
    if len(np.unique(wh, axis=0)) < n:
        raise ValueError(f"anchors=auto: {len(wh)} boxes of at least {MIN_BOX_PX:g} px at imgsz={imgsz} "
                         f"({len(np.unique(wh, axis=0))} distinct sizes) cannot give {n} anchors; use anchors=default")
    best, best_iou = None, -1.0
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        centres = _kmeans_iou(wh, n, rng)
        score = mean_best_iou(wh, centres)
        if score > best_iou:
            best, best_iou = centres, score
    return best[np.argsort(best.prod(1), kind="stable")].astype(np.float32)


def train_box_sizes(samples: Sequence[Any], resize_mode: str = "stretch") -> np.ndarray:
    """Box (w, h) of ``Sample`` records as fractions of the resized square input: each side
    over its image side when the pipeline stretches, over the longer side when it letterboxes."""
    sizes = []
    for s in samples:
        if len(s.boxes) == 0 or not s.width or not s.height:
            continue
        wh = (s.boxes[:, 2:4] - s.boxes[:, 0:2]).astype(np.float64)
        if resize_mode == "letterbox":
            wh = wh / max(s.width, s.height)
        else:
            wh = wh / np.array([s.width, s.height], np.float64)
        sizes.append(wh)
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))


def anchor_report(wh_px: np.ndarray, anchors: np.ndarray) -> str:
    bpr = best_possible_recall(wh_px, anchors)
    fits = (wh_iou(wh_px, anchors) > 0.213).sum(1).mean() if len(wh_px) else 0.0
    return (f"best possible recall {bpr:.4f} (w and h within {RATIO_THR:g}x of an anchor), mean best IoU "
            f"{mean_best_iou(wh_px, anchors):.3f}, {fits:.2f} anchors above IoU 0.213 per box, {len(wh_px)} boxes")
