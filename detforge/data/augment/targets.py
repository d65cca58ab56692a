"""Boxes, labels and per-box loss weights that travel together through every transform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Targets:
    """Absolute xyxy float32 boxes [N, 4], int64 labels [N], float32 weights [N].

    ``weights`` is 1.0 for an ordinary box; geometry-preserving MixUp sets it to the blend
    ratio of the image the box came from, so a loss can down-weight faded objects.
    """

    boxes: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.weights = np.asarray(self.weights, dtype=np.float32).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.weights)):
            raise ValueError(
                f"targets disagree: {len(self.boxes)} boxes, {len(self.labels)} labels, "
                f"{len(self.weights)} weights"
            )

    @classmethod
    def from_boxes(cls, boxes, labels) -> "Targets":
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        return cls(boxes, labels, np.ones(len(labels), np.float32))

    @classmethod
    def empty(cls) -> "Targets":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: np.ndarray) -> "Targets":
        return Targets(self.boxes[keep], self.labels[keep], self.weights[keep])

    def with_boxes(self, boxes: np.ndarray) -> "Targets":
        return Targets(boxes, self.labels, self.weights)

    def with_weights(self, weights) -> "Targets":
        return Targets(self.boxes, self.labels, np.broadcast_to(weights, self.labels.shape).copy())

    @staticmethod
    def concat(parts: list["Targets"]) -> "Targets":
        if not parts:
            return Targets.empty()
        return Targets(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.weights for p in parts]),
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
