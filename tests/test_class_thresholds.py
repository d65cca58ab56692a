"""Per-class deployment thresholds (best F1 on val) and their degenerate cases, by hand, and
predict saying which stored thresholds it uses."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from detforge.eval.threshold import CLASS_CONF_FLOOR, best_f1_thresholds, confidence_sweep, match_image

NAMES = ["A", "B", "C", "D"]
A, B, C, D = range(4)


def sweep_of(images):
    """images: (gt boxes, gt labels, pred boxes, scores, labels) -> confidence_sweep over 0..1."""
    return confidence_sweep([match_image(*im, conf=0.0) for im in images], len(NAMES))


def box(i):
    return [20 * i, 0, 20 * i + 10, 10]


def far(i):
    return [20 * i, 100, 20 * i + 10, 110]


def hand_images():
    """A: 2 GTs; TP 0.9, FP 0.6, TP 0.405, FP 0.205. F1 by conf: 2/3 above 0.6, 1/2 in
    (0.405, 0.6], 4/5 in (0.205, 0.405] (TP 2, FP 1, FN 0), 2/3 below. The best F1 holds at
    sweep points 0.21 .. 0.40: the middle one is 0.30.
    B: 1 GT, found only at score 0.03: best F1 1.0 at points 0 .. 0.03, middle 0.01 < floor.
    C: 1 GT and only a prediction far from it (score 0.7): F1 0 at every threshold.
    D: no GT, one prediction (0.8)."""
    gt_boxes = [box(0), box(1), box(2), box(3)]
    gt_labels = [A, A, B, C]
    preds = [(box(0), 0.9, A), (far(0), 0.6, A), (box(1), 0.405, A), (far(1), 0.205, A),
             (box(2), 0.03, B), (far(2), 0.7, C), (far(3), 0.8, D)]
    return [(np.array(gt_boxes, float), np.array(gt_labels), np.array([p[0] for p in preds], float),
             np.array([p[1] for p in preds]), np.array([p[2] for p in preds]))]


def test_hand_worked_thresholds_and_degenerate_classes():
    sweep = sweep_of(hand_images())
    f1_a = sweep["f1"][:, A]
    assert f1_a.max() == pytest.approx(0.8) and f1_a[30] == pytest.approx(0.8) and f1_a[41] == pytest.approx(0.5)
    assert sweep["f1"][:, C].max() == 0.0 and sweep["n_gt"][D] == 0
    chosen = best_f1_thresholds(sweep, NAMES, fallback_conf=0.25)
    # A: its own; B: below the floor; C: best F1 is 0; D: no ground truth -> the global conf
    assert chosen == [0.3, 0.25, 0.25, 0.25]
    # with the floor lowered B keeps its own (tiny) threshold: the floor is what refused it
    assert best_f1_thresholds(sweep, NAMES, fallback_conf=0.25, floor=0.0)[B] == 0.01
    assert CLASS_CONF_FLOOR == 0.05


def test_all_classes_degenerate_after_a_short_run():
    # a barely trained model: every prediction misses, scores near 0 -> no class may get 0.00
    rng = np.random.default_rng(0)
    gt = np.array([box(i) for i in range(4)], float)
    preds = np.array([far(i % 4) for i in range(40)], float)
    images = [(gt, np.arange(4), preds, rng.uniform(0.001, 0.04, 40), rng.integers(0, 4, 40))]
    assert best_f1_thresholds(sweep_of(images), NAMES, fallback_conf=0.5) == [0.5] * 4


def test_class_count_mismatch_is_refused():
    with pytest.raises(ValueError, match="4 classes, names 2"):
        best_f1_thresholds(sweep_of(hand_images()), ["A", "B"], 0.25)


def test_predict_says_which_stored_thresholds_it_uses(tmp_path, caplog):
    from deploy_helpers import NAMES as CELLS
    from deploy_helpers import save_test_checkpoint, spread_model

    from detforge.infer.predictor import Predictor

    pt = save_test_checkpoint(spread_model("fcos-n"), tmp_path / "best.pt", 64, class_conf=[0.2, 0.35, 0.5])
    with caplog.at_level(logging.INFO, logger="detforge"):
        p = Predictor(pt, threads=1)
    np.testing.assert_allclose(p.conf, [0.2, 0.35, 0.5])
    assert f"per-class thresholds stored with the model (conf= overrides): {CELLS[0]} 0.2, {CELLS[1]} 0.35, " \
           f"{CELLS[2]} 0.5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detforge"):
        Predictor(pt, conf=0.4, threads=1)
    assert "stored with the model" not in caplog.text
