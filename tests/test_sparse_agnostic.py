"""benchmarks/sparse_agnostic.py: per-epoch mAP with and without the class."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from detforge.engine.resolve import resolve_train_config
from detforge.engine.trainer import Trainer
from detforge.records import Detections, Sample

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sparse_agnostic.py"
spec = importlib.util.spec_from_file_location("sparse_agnostic", SCRIPT)
sparse_agnostic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sparse_agnostic)


def test_agnostic_keeps_each_box_once_with_its_best_score():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    det = Detections(boxes, np.array([0.9, 0.5, 0.4], np.float32), np.array([1, 2, 1]))
    out = sparse_agnostic._agnostic(det)
    np.testing.assert_array_equal(out.boxes, boxes[[0, 2]])
    np.testing.assert_allclose(out.scores, [0.9, 0.4])
    np.testing.assert_array_equal(out.labels, [0, 0])
    empty = sparse_agnostic._agnostic(Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
    assert len(empty.scores) == 0


def test_right_class_counts_found_boxes_and_their_classes():
    gt = Sample(Path("a.jpg"), np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32),
                np.array([1, 0, 2]), 100, 100)
    # the first box exact and right; the second at IoU 81/100 with the wrong class; the third missed
    det = Detections(np.array([[0, 0, 10, 10], [21, 21, 30, 30], [80, 80, 90, 90]], np.float32),
                     np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 2, 2]))
    assert sparse_agnostic._right_class([gt], [det]) == (2, 1)
    # only the top 1 of the image counts with top=1: one found, right
    assert sparse_agnostic._right_class([gt], [det], top=1) == (1, 1)


def test_scores_match_the_runs_own_validation(synthetic_root, tmp_path, capsys):
    args = {"data": str(synthetic_root), "model": "dfine-n", "imgsz": 96, "batch": 8, "epochs": 2, "workers": 0,
            "device": "cpu", "seed": 0, "save_period": 1, "project": str(tmp_path), "name": "run",
            "verbose": False, "plots": False}
    Trainer(resolve_train_config(args)).train()
    rows = sparse_agnostic.score_run(tmp_path / "run", str(synthetic_root))
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        logged = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == [1, 2]
    for mine, theirs in zip(rows, logged):  # the saved epoch weights are the ones that epoch validated
        assert mine["map50"] == pytest.approx(float(theirs["map50"]), abs=1e-4)
        assert mine["map50_95"] == pytest.approx(float(theirs["map50_95"]), abs=1e-4)
        assert 0 <= mine["agnostic_map50"] <= 1 and 0 <= mine["found_top10"] <= mine["found_any"] <= 1
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == rows
    assert sparse_agnostic.score_run(tmp_path / "run", str(synthetic_root), epochs=[2]) == rows[1:]
    with pytest.raises(SystemExit, match=r"epoch\(s\) \[7\]"):
        sparse_agnostic.score_run(tmp_path / "run", str(synthetic_root), epochs=[2, 7])


def test_duplicates_count_only_those_above_the_weakest_hit():
    a = Sample(Path("a.jpg"), np.array([[0, 0, 10, 10]], np.float32), np.array([0]), 100, 100)
    b = Sample(Path("b.jpg"), np.array([[50, 50, 70, 70]], np.float32), np.array([0]), 100, 100)
    # a: hit 0.9, a duplicate 0.6 (IoU 0.81), a wrong-class box on it 0.5 (not a duplicate), a
    # duplicate 0.2; b: hit 0.4, a miss 0.95. The weakest hit scores 0.4: one duplicate is above it
    det_a = Detections(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [0, 0, 9, 9]], np.float32),
                       np.array([0.9, 0.6, 0.5, 0.2], np.float32), np.array([0, 0, 1, 0]))
    det_b = Detections(np.array([[50, 50, 70, 70], [0, 80, 10, 90]], np.float32),
                       np.array([0.4, 0.95], np.float32), np.array([0, 0]))
    assert sparse_agnostic._duplicates([a, b], [det_a, det_b]) == 1
    assert sparse_agnostic._duplicates([a], [det_a]) == 0  # alone, a's only hit (0.9) outranks both duplicates
    kept = sparse_agnostic._nms(det_a)  # IoU 0.81 > 0.7 drops the 0.6 and the 0.2 (0.81); class 1 stays
    np.testing.assert_allclose(kept.scores, [0.9, 0.5])
