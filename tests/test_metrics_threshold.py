"""Fixed-threshold metrics (seed 000's rules) against hand-worked cases, and the Evaluator."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from detforge.eval.evaluator import Evaluator, fitness
from detforge.eval.threshold import (
    confidence_sweep,
    match_image,
    normalize_rows,
    threshold_metrics,
)
from detforge.records import Detections

NAMES = ["A", "B", "C"]
A, B, C, BG = 0, 1, 2, 3


def run(images, conf=0.5, iou_thr=0.5, names=NAMES):
    """images: list of (gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels)."""
    matches = [match_image(*im, conf=conf, iou_thr=iou_thr) for im in images]
    return threshold_metrics(matches, names)


def image(gt=(), gl=(), pb=(), ps=(), pl=()):
    return (np.array(gt, float).reshape(-1, 4), np.array(gl, int), np.array(pb, float).reshape(-1, 4),
            np.array(ps, float), np.array(pl, int))


SQ = [0, 0, 10, 10]


def test_perfect_match():
    m = run([image([SQ], [A], [SQ], [0.9], [A])])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["iou"] == 1.0
    assert m["confusion"][A][A] == 1 and sum(map(sum, m["confusion"])) == 1


def test_duplicate_prediction_is_fp_in_background_row():
    # second box [0,0,10,9]: IoU 0.9 with the GT, but the GT is already matched
    m = run([image([SQ], [A], [SQ, [0, 0, 10, 9]], [0.9, 0.8], [A, A])])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["precision"] == 0.5 and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["iou"] == 1.0  # the TP is the score-0.9 exact box
    cm = np.array(m["confusion"])
    assert cm[A, A] == 1 and cm[BG, A] == 1 and cm.sum() == 2


def test_wrong_class_counts_fp_and_fn_and_confusion_cell():
    m = run([image([SQ], [A], [SQ], [0.9], [B])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    rows = {r["class"]: r for r in m["per_class"]}
    assert (rows["A"]["fn"], rows["A"]["fp"], rows["B"]["fp"], rows["B"]["fn"]) == (1, 0, 1, 0)
    cm = np.array(m["confusion"])
    # one GT, one prediction: a single (gt A -> pred B) cell, nothing against background
    assert cm[A, B] == 1 and cm.sum() == 1
    assert m["precision"] == m["recall"] == m["f1"] == m["iou"] == 0.0


def test_wrong_class_then_same_class_match():
    # B (0.9) lands on GT A first; A (0.8, IoU 0.7) then matches it: A is a TP, B a plain FP
    m = run([image([SQ], [A], [SQ, [0, 0, 10, 7]], [0.9, 0.8], [B, A])])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["iou"] == pytest.approx(0.7)
    cm = np.array(m["confusion"])
    assert cm[A, A] == 1 and cm[BG, B] == 1 and cm.sum() == 2


def test_only_one_confusion_per_gt():
    m = run([image([SQ], [A], [SQ, [0, 0, 10, 9]], [0.9, 0.8], [B, C])])
    cm = np.array(m["confusion"])
    assert cm[A, B] == 1 and cm[BG, C] == 1 and cm[A, BG] == 0 and cm.sum() == 2
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 1)


def test_iou_must_exceed_threshold():
    # [0,0,10,5] has IoU exactly 0.5: not > 0.5, so FP + FN; [0,0,10,5.5] has 0.55: TP
    m = run([image([SQ], [A], [[0, 0, 10, 5]], [0.9], [A])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)
    cm = np.array(m["confusion"])
    assert cm[A, BG] == 1 and cm[BG, A] == 1
    m = run([image([SQ], [A], [[0, 0, 10, 5.5]], [0.9], [A])])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0) and m["iou"] == pytest.approx(0.55)
    m = run([image([SQ], [A], [[0, 0, 10, 5.5]], [0.9], [A])], iou_thr=0.6)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)


def test_confidence_threshold_inclusive():
    m = run([image([SQ], [A], [SQ], [0.49], [A])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 1)
    m = run([image([SQ], [A], [SQ], [0.5], [A])])
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)


def test_descending_score_decides_and_highest_iou_gt_is_taken():
    # p1 (listed first, score 0.6) has IoU 0.9 with the GT; p2 (score 0.95) has IoU 0.8.
    # p2 is taken first and matches; p1 is then a duplicate (FP) although it overlaps better
    p1 = [0, 0, 10, 9]
    p2 = [0, 0, 10, 8]
    m = match_image(np.array([SQ], float), np.array([A]), np.array([p1, p2], float),
                    np.array([0.6, 0.95]), np.array([A, A]), iou_thr=0.5)
    assert m.scores.tolist() == [0.95, 0.6]
    assert m.matched_gt.tolist() == [0, -1]
    assert m.ious.tolist() == pytest.approx([0.8, 0.0])


def test_highest_iou_unmatched_same_class_gt():
    gt = [[0, 0, 10, 10], [0, 0, 10, 12]]  # pred [0,0,10,11]: IoU 10/11 with GT0, 11/12 with GT1
    m = match_image(np.array(gt, float), np.array([A, A]), np.array([[0, 0, 10, 11]], float),
                    np.array([0.9]), np.array([A]), iou_thr=0.5)
    assert m.matched_gt.tolist() == [1] and m.ious[0] == pytest.approx(11 / 12)
    # the same-class GT wins over a better-overlapping GT of another class
    m = match_image(np.array(gt, float), np.array([A, B]), np.array([[0, 0, 10, 11]], float),
                    np.array([0.9]), np.array([A]), iou_thr=0.5)
    assert m.matched_gt.tolist() == [0]


def test_empty_image_and_empty_predictions_and_background_image():
    m = run([image()])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["iou"] == 0.0
    assert np.array(m["confusion"]).sum() == 0
    m = run([image([SQ, [20, 20, 30, 30]], [A, C])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 2)
    cm = np.array(m["confusion"])
    assert cm[A, BG] == 1 and cm[C, BG] == 1
    m = run([image(pb=[SQ], ps=[0.9], pl=[B])])
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 0)
    assert np.array(m["confusion"])[BG, B] == 1


def test_multi_image_totals_and_per_class_table():
    images = [
        # TP A (IoU 1), TP B (IoU 0.8), FP C on background
        image([SQ, [20, 0, 30, 10]], [A, B], [SQ, [20, 0, 30, 8], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [A, B, C]),
        # TP A (IoU 0.6), missed B, missed A
        image([SQ, [20, 0, 30, 10], [40, 0, 50, 10]], [A, B, A], [[0, 0, 10, 6]], [0.95], [A]),
        image(),
    ]
    m = run(images)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 1, 2)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert m["iou"] == pytest.approx((1 + 0.8 + 0.6) / 3)
    a, b, c = m["per_class"]
    assert (a["class"], a["images"], a["instances"], a["tp"], a["fp"], a["fn"]) == ("A", 2, 3, 2, 0, 1)
    assert a["iou"] == pytest.approx(0.8) and a["recall"] == pytest.approx(2 / 3) and a["precision"] == 1.0
    assert (b["images"], b["instances"], b["tp"], b["fp"], b["fn"]) == (2, 2, 1, 0, 1)
    assert (c["images"], c["instances"], c["tp"], c["fp"], c["fn"]) == (0, 0, 0, 1, 0)
    assert c["precision"] == c["recall"] == c["f1"] == 0.0
    assert m["confusion"] == [[2, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]]


def random_images(seed, n=25, k=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = int(rng.integers(0, 7))
        xy = rng.uniform(0, 200, (g, 2))
        wh = rng.uniform(4, 80, (g, 2))
        gb = np.concatenate([xy, xy + wh], 1)
        gl = rng.integers(0, k, g)
        # noisy copies (some duplicated, some relabelled) plus random false positives
        src = rng.integers(0, max(g, 1), int(rng.integers(0, 2 * g + 1))) if g else np.zeros(0, int)
        pb = gb[src] + rng.normal(0, 5, (len(src), 4)) if g else np.zeros((0, 4))
        pl = np.where(rng.uniform(size=len(src)) < 0.8, gl[src] if g else src, rng.integers(0, k, len(src)))
        extra = int(rng.integers(0, 3))
        exy = rng.uniform(0, 200, (extra, 2))
        pb = np.concatenate([pb, np.concatenate([exy, exy + 20], 1)])
        pl = np.concatenate([pl, rng.integers(0, k, extra)]).astype(int)
        ps = np.round(rng.uniform(0, 1, len(pl)), 2)  # rounded: ties and exact-grid scores occur
        out.append((gb, gl, pb, ps, pl))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_is_consistent_with_counts(seed):
    images = random_images(seed)
    m = run(images, conf=0.3)
    cm = np.array(m["confusion"])
    k = len(NAMES)
    for c, row in enumerate(m["per_class"]):
        assert cm[c].sum() == row["instances"]  # each GT once in its row
        assert cm[:, c].sum() == row["tp"] + row["fp"]  # each kept prediction once in its column
        assert cm[c, c] == row["tp"]
        assert cm[:, c].sum() - cm[c, c] == row["fp"]
        assert cm[c].sum() - cm[c, c] == row["fn"]
    assert cm[k, k] == 0
    norm = normalize_rows(cm)
    nonempty = cm.sum(1) > 0
    np.testing.assert_allclose(norm[nonempty].sum(1), 1.0)
    assert np.all(norm[~nonempty] == 0)


@pytest.mark.parametrize("seed", [0, 3])
def test_confidence_sweep_equals_metrics_at_each_threshold(seed):
    images = random_images(seed)
    confs = np.array([0.0, 0.1, 0.33, 0.5, 0.75, 0.9, 1.0])
    sweep = confidence_sweep([match_image(*im, conf=0.0) for im in images], len(NAMES), confs)
    for i, conf in enumerate(confs):
        direct = run(images, conf=conf)
        for c, row in enumerate(direct["per_class"]):
            assert (sweep["tp"][i, c], sweep["fp"][i, c], sweep["fn"][i, c]) == (row["tp"], row["fp"], row["fn"])
            assert sweep["precision"][i, c] == pytest.approx(row["precision"])
            assert sweep["f1"][i, c] == pytest.approx(row["f1"])


def test_evaluator_compute_state_merge_and_fitness():
    images = random_images(5, n=12)
    full = Evaluator(NAMES, conf=0.4)
    parts = [Evaluator(NAMES, conf=0.4), Evaluator(NAMES, conf=0.4)]
    for i, (gb, gl, pb, ps, pl) in enumerate(images):
        parts[i % 2].add(gb, gl, Detections(pb, ps, pl), (240, 320))
    # the single evaluator sees the images in the gathered order (rank 0's, then rank 1's):
    # COCO breaks score ties across images by image order
    for gb, gl, pb, ps, pl in images[0::2] + images[1::2]:
        full.add(gb, gl, Detections(pb, ps, pl), (240, 320))
    m = full.compute()
    for key in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large", "precision", "recall",
                "f1", "iou", "tp", "fp", "fn", "per_class", "confusion"):
        assert key in m
    assert set(m["per_class"][0]) == {"class", "images", "instances", "tp", "fp", "fn", "precision", "recall",
                                      "f1", "iou", "ap50", "ap50_95"}
    assert 0 < m["map50_95"] < m["map50"] <= 1
    assert m["tp"] == sum(r["tp"] for r in m["per_class"])
    # gathered states (through pickle, as all_gather_object does) give the same metrics
    states = [pickle.loads(pickle.dumps(p.state())) for p in parts]
    merged = Evaluator(NAMES, conf=0.4).merge(states).compute()
    assert merged == m
    assert fitness(m) == pytest.approx((m["map50"] + m["f1"]) / 2)
    assert fitness(m, "map50_95") == m["map50_95"]
    with pytest.raises(ValueError, match="allowed"):
        fitness(m, "accuracy")


def test_evaluator_rejects_bad_input():
    ev = Evaluator(NAMES)
    with pytest.raises(ValueError, match="outside 0..2"):
        ev.add(np.array([SQ], float), np.array([3]), Detections.empty(), (10, 10))
    with pytest.raises(ValueError, match="2 labels"):
        ev.add(np.array([SQ], float), np.array([0, 1]), Detections.empty(), (10, 10))
    empty = Evaluator(NAMES).compute()
    assert empty["map50_95"] == 0.0 and empty["tp"] == 0 and empty["f1"] == 0.0
