"""Copy-Blend: objects of another image blended in at their own size, with a feathered cut and
their blend ratio as loss weight; off with close_mosaic like mosaic and MixUp."""

from __future__ import annotations

import math

import numpy as np

from detforge.config import TrainConfig
from detforge.data.augment import copy_blend as cb
from detforge.data.augment.pipeline import TrainTransform
from detforge.data.augment.targets import Targets


def test_ramp_and_feather_hand_worked():
    # cosine rise over 2 values: 0.5 - 0.5 cos(pi * 0.25), 0.5 - 0.5 cos(pi * 0.75)
    up = [0.5 - 0.5 * math.cos(math.pi * 0.25), 0.5 - 0.5 * math.cos(math.pi * 0.75)]
    np.testing.assert_allclose(cb._ramp(5, 2, 1), [up[0], up[1], 1.0, 1.0, 0.5], atol=1e-6)
    mask = cb.feather_mask(3, 4, (0, 0, 0, 1))  # left, top, right, bottom: only the bottom row fades
    np.testing.assert_allclose(mask, [[1] * 4, [1] * 4, [0.5] * 4], atol=1e-6)


def test_object_pasted_at_full_ratio(monkeypatch):
    monkeypatch.setattr(cb, "BLEND_RANGE", (1.0, 1.0))
    img = np.full((100, 100, 3), 50, np.uint8)
    donor = np.full((100, 100, 3), 50, np.uint8)
    donor[20:40, 30:60] = 250  # a 30 x 20 object
    targets = Targets.from_boxes([[0, 0, 10, 10]], [0])
    out, t = cb.copy_blend(img, targets, donor, Targets.from_boxes([[30, 20, 60, 40]], [1]), np.random.default_rng(0))
    assert t.labels.tolist() == [0, 1] and t.weights.tolist() == [1.0, 1.0]
    x1, y1, x2, y2 = t.boxes[1].astype(int)
    assert (x2 - x1, y2 - y1) == (30, 20)
    assert (out[y1:y2, x1:x2] == 250).all()  # the box itself at ratio 1
    assert (out[:y1 - 3] == 50).all()  # away from the cut, the image is untouched
    assert out.sum() - 50 * out.size == 200 * 3 * 30 * 20  # the margin around it is background-coloured


def test_ratio_becomes_weight_and_crowded_images_get_nothing(monkeypatch):
    monkeypatch.setattr(cb, "BLEND_RANGE", (0.6, 0.6))
    donor = np.zeros((50, 50, 3), np.uint8)
    donor[10:20, 10:20] = 200
    img = np.zeros((50, 50, 3), np.uint8)
    out, t = cb.copy_blend(img, Targets.empty(), donor, Targets.from_boxes([[10, 10, 20, 20]], [0]), np.random.default_rng(1))
    x1, y1, x2, y2 = t.boxes[0].astype(int)
    assert math.isclose(float(t.weights[0]), 0.6, rel_tol=1e-6)
    assert (out[y1 + 2:y2 - 2, x1 + 2:x2 - 2] == 120).all()  # 0.6 * 200 + 0.4 * 0
    full = Targets.from_boxes([[0, 0, 50, 50]], [0])  # any paste would lie wholly inside this box
    same, t2 = cb.copy_blend(np.zeros((50, 50, 3), np.uint8), full, donor, Targets.from_boxes([[10, 10, 20, 20]], [0]),
                             np.random.default_rng(1))
    assert len(t2) == 1 and same.sum() == 0


def _loader():
    rng = np.random.default_rng(5)
    items = []
    for _ in range(4):
        img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        items.append((img, Targets.from_boxes([[10, 10, 30, 34]], [0])))
    return lambda i: (items[i][0].copy(), items[i][1])


def test_pipeline_adds_objects_only_in_strong_epochs():
    base = dict(imgsz=64, mosaic=0.0, mixup=0.0, scale=0.0, translate=0.0, fliplr=0.0)
    load = _loader()
    on = TrainTransform(TrainConfig(**base, copy_blend=1.0), 64)
    off = TrainTransform(TrainConfig(**base), 64)
    img, t, _ = on(0, load, 4, np.random.default_rng(0), strong=True)
    assert len(t) == 2
    # after close_mosaic (strong=False) Copy-Blend is off and draws nothing from the generator
    a = on(0, load, 4, np.random.default_rng(0), strong=False)
    b = off(0, load, 4, np.random.default_rng(0), strong=False)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1].boxes, b[1].boxes)
