"""Boxes, labels, per-box loss weights and (optionally) outlines that travel together through
every transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detforge.data.polygons import box_ring, outline_area, outline_bounds, transform_rings


@dataclass
class Targets:
    """Absolute xyxy float32 boxes [N, 4], int64 labels [N], float32 weights [N].

    ``weights`` is 1.0 for an ordinary box; geometry-preserving MixUp sets it to the blend
    ratio of the image the box came from, so a loss can down-weight faded objects.
    ``polygons`` (None when masks are not wanted) holds each object's outline: a list of rings
    (float [K, 2], absolute pixels), aligned with the boxes (see ``detforge.data.polygons``).
    """

    boxes: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    polygons: list | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.weights)):
            raise ValueError(
                f"targets disagree: {len(self.boxes)} boxes, {len(self.labels)} labels, "
                f"{len(self.weights)} weights"
            )
        if self.polygons is not None and len(self.polygons) != len(self.labels):
            raise ValueError(f"targets disagree: {len(self.labels)} boxes but {len(self.polygons)} outlines")

    @classmethod
    def from_boxes(cls, boxes, labels, polygons=None) -> "Targets":
        """``polygons``: one outline per box (an empty outline: the box stands in for it)."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        t = cls(boxes, labels, np.ones(len(labels), np.float32))
        if polygons is not None:
            t.polygons = [[np.asarray(r, np.float64) for r in rings] or [box_ring(b)]
                          for rings, b in zip(polygons, t.boxes)]
            if len(t.polygons) != len(t.labels):
                raise ValueError(f"targets disagree: {len(t.labels)} boxes but {len(polygons)} outlines")
        return t

    @classmethod
    def empty(cls) -> "Targets":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> "Targets":
        polygons = None
        if self.polygons is not None:
            polygons = [self.polygons[i] for i in np.arange(len(self.labels))[keep]]
        return Targets(self.boxes[keep], self.labels[keep], self.weights[keep], polygons)

    def with_boxes(self, boxes: np.ndarray) -> "Targets":
        return Targets(boxes, self.labels, self.weights, self.polygons)

    def with_weights(self, weights) -> "Targets":
        return Targets(self.boxes, self.labels, np.broadcast_to(weights, self.labels.shape).copy(), self.polygons)

    def with_polygons(self, polygons: list | None) -> "Targets":
        return Targets(self.boxes, self.labels, self.weights, polygons)

    def mapped(self, m: np.ndarray, boxes: np.ndarray) -> "Targets":
        """These targets with ``boxes`` (already moved by the caller) and outlines moved by the
        3x3 affine ``m`` (flips, rot90, resizes: maps that keep everything inside the image)."""
        polygons = None
        if self.polygons is not None:
            polygons = [transform_rings(rings, m) for rings in self.polygons]
        return Targets(boxes, self.labels, self.weights, polygons)

    def polygon_boxes(self) -> np.ndarray:
        """The bounds of each outline (float32 [N, 4]); needs ``polygons``."""
        return np.stack([outline_bounds(r) for r in self.polygons]).reshape(-1, 4) if self.polygons else \
            np.zeros((0, 4), np.float32)

    def polygon_areas(self) -> np.ndarray:
        return np.array([outline_area(r) for r in self.polygons or []], np.float64)

    @staticmethod
    def concat(parts: list["Targets"]) -> "Targets":
        if not parts:
            return Targets.empty()
        polygons = None
        if any(p.polygons is not None for p in parts):
            # a part without outlines (its image had none) lends its boxes as outlines
            polygons = [rings for p in parts
                        for rings in (p.polygons if p.polygons is not None else [[box_ring(b)] for b in p.boxes])]
        return Targets(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.weights for p in parts]),
            polygons,
        )


def clip_boxes(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def keep_visible(
    clipped: np.ndarray, reference: np.ndarray, min_size: float, min_visibility: float
) -> np.ndarray:
    """Mask of boxes still worth learning from.

    ``reference`` is each box transformed without clipping; a box is kept when both sides of
    its clipped version are >= ``min_size`` px and it keeps >= ``min_visibility`` of the
    reference area.
    """
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    ref = box_areas(reference)
    visible = np.divide(w.clip(0) * h.clip(0), ref, out=np.zeros_like(ref), where=ref > 0)
    return (w >= min_size) & (h >= min_size) & (visible >= min_visibility) & (w > 0) & (h > 0)
