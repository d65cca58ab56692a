"""The record types that flow from files on disk to metrics.

Inside detforge boxes are always absolute-pixel ``xyxy`` float32 in the image as it is
displayed (EXIF orientation applied); formats convert at the edges only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    return arr.reshape(-1, 4)


def _as_labels(labels) -> np.ndarray:
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _as_rings(rings) -> list[np.ndarray]:
    """One object's rings as float32 [K, 2]; rings that cannot enclose anything (fewer than
    3 points, NaN/inf) are left out (readers report them; see ``detforge data check``)."""
    out = []
    for ring in rings:
        arr = np.asarray(ring, dtype=np.float32).reshape(-1, 2)
        if len(arr) >= 3 and np.isfinite(arr).all():
            out.append(arr)
    return out


@dataclass
class Sample:
    """One annotated image: what every format reader produces."""

    image_path: Path
    boxes: np.ndarray  # float32 [N, 4], absolute xyxy pixels
    labels: np.ndarray  # int64 [N], 0-based indices into the dataset's names
    width: int
    height: int
    # crowd regions (COCO iscrowd=1): ignore regions for evaluation, never training targets
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # float32 [M, 4]
    crowd_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 [M]
    image_id: int | str | None = None  # the annotation file's own image id, where it has one (COCO)
    # instance outlines, aligned with boxes: per object a list of rings float32 [K, 2] (absolute
    # x, y; the object is their union; [] = no outline for that object); None = no outlines at all
    polygons: list[list[np.ndarray]] | None = None

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        self.boxes = _as_boxes(self.boxes)
        self.labels = _as_labels(self.labels)
        self.crowd_boxes = _as_boxes(self.crowd_boxes)
        self.crowd_labels = _as_labels(self.crowd_labels)
        if len(self.boxes) != len(self.labels):
            raise ValueError(
                f"{self.image_path}: {len(self.boxes)} boxes but {len(self.labels)} labels"
            )
        if len(self.crowd_boxes) != len(self.crowd_labels):
            raise ValueError(
                f"{self.image_path}: {len(self.crowd_boxes)} crowd regions but {len(self.crowd_labels)} labels"
            )
        if self.polygons is not None:
            self.polygons = [_as_rings(rings) for rings in self.polygons]
            if len(self.polygons) != len(self.boxes):
                raise ValueError(f"{self.image_path}: {len(self.boxes)} boxes but {len(self.polygons)} outlines")

    @property
    def is_background(self) -> bool:
        return len(self.labels) == 0


@dataclass
class Detections:
    """A model's predictions for one image, in that image's pixels."""

    boxes: np.ndarray  # float32 [K, 4], absolute xyxy
    scores: np.ndarray  # float32 [K], sorted descending
    labels: np.ndarray  # int64 [K]
    masks: np.ndarray | None = None  # uint8 [K, H, W] binary instance masks (mask models only)

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = _as_labels(self.labels)
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=np.uint8)
            if self.masks.ndim != 3 or len(self.masks) != len(self.scores):
                raise ValueError(f"{len(self.scores)} detections but masks of shape {self.masks.shape}")

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, conf: float) -> "Detections":
        keep = self.scores >= conf
        masks = None if self.masks is None else self.masks[keep]
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], masks)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclass
class Problem:
    """One thing wrong with the input data. Collected, counted and reported; never silent."""

    path: Path
    kind: str  # short machine-readable tag, e.g. "degenerate_box", "unreadable_image"
    message: str
    fatal_for_sample: bool = False  # True when the image itself cannot be used

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class DetectionData:
    """A dataset as read from disk: class names, samples per split, and every problem found."""

    names: list[str]
    splits: dict[str, list[Sample]]
    root: Path
    layout: str  # "yolo", "coco", "voc", "csv", "data.yaml", "synthetic"
    problems: list[Problem] = field(default_factory=list)
    # the annotation file's category id of each class (COCO); None: ids 1..K, as written to COCO
    category_ids: list[int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts
