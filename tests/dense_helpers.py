"""Helpers shared by the tests of the dense one-stage families (FCOS, YOLOv3, EfficientDet):
target dicts, a set of separable coloured rectangles to overfit, and the check that the eager
``postprocess`` and the fixed-row ``export_forward`` keep the same detections."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou


def targets(boxes, labels, weights=None) -> dict[str, torch.Tensor]:
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.long)}
    if weights is not None:
        t["weights"] = torch.tensor(weights, dtype=torch.float32)
    return t


def synthetic_rectangles(n_images: int = 4, size: int = 128, seed: int = 0):
    """Filled rectangles on grey: class 0 red, class 1 blue, 3 per image, apart from each other
    (an occluded box could not be found, whatever the model)."""
    rng = np.random.default_rng(seed)
    images, all_targets = [], []
    for _ in range(n_images):
        img = np.full((size, size, 3), 90, np.uint8)
        boxes, labels = [], []
        while len(boxes) < 3:
            w, h = rng.integers(20, 50, 2)
            x0, y0 = rng.integers(0, size - w), rng.integers(0, size - h)
            if any(x0 < b[2] + 4 and b[0] < x0 + w + 4 and y0 < b[3] + 4 and b[1] < y0 + h + 4 for b in boxes):
                continue
            label = len(boxes) % 2
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w - 1), int(y0 + h - 1)), (230, 40, 40) if label == 0 else (40, 40, 230), -1)
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
        all_targets.append(targets(boxes, labels))
    return torch.stack(images), all_targets


def check_postprocess_matches_export(model, height: int, width: int, nms_iou: float, num_classes: int = 3) -> None:
    """On two random images: ``postprocess`` gives 1..40 detections per image, sorted, inside
    the image, NMS-clean per class; ``export_forward`` (60 rows) holds the same detections
    first, then zero rows."""
    images = torch.rand(2, 3, height, width)
    with torch.no_grad():
        dets = model.postprocess(model(images), (height, width), max_det=40)
        boxes, scores, labels = model.export_forward(images, max_det=60)
    assert boxes.shape == (2, 60, 4) and scores.shape == (2, 60) and labels.shape == (2, 60)
    for i, d in enumerate(dets):
        n = len(d["scores"])
        assert 0 < n <= 40
        assert bool((d["scores"][1:] <= d["scores"][:-1]).all())
        b = d["boxes"]
        assert bool((b[:, :2] >= 0).all() and (b[:, 2] <= width).all() and (b[:, 3] <= height).all())
        assert bool((b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all())
        assert set(d["labels"].tolist()) <= set(range(num_classes))
        assert torch.allclose(boxes[i, :n], b) and torch.equal(labels[i, :n], d["labels"])
        assert torch.allclose(scores[i, :n], d["scores"])
        kept = int((scores[i] > 0).sum())
        assert bool((scores[i, kept:] == 0).all() and (boxes[i, kept:] == 0).all())
        for c in d["labels"].unique():
            same = b[d["labels"] == c]
            assert box_iou(same, same).fill_diagonal_(0).max().item() <= nms_iou + 1e-6
