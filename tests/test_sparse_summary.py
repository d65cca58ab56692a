"""benchmarks/sparse_summary.py: the per-run figures behind the sparse-object tables, on
hand-worked curves."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sparse_summary.py"
spec = importlib.util.spec_from_file_location("sparse_summary", SCRIPT)
sparse_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sparse_summary)


def curve(map50_95, map50):
    return [{"epoch": i + 1, "map50_95": a, "map50": b} for i, (a, b) in enumerate(zip(map50_95, map50))]


def test_line_fit_hand_worked():
    # a straight climb: all of it is climb, none scatter
    assert sparse_summary.line_fit([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx((0.4, 0.0), abs=1e-12)
    # 0, 1, 0, 1, 0: mean 0.4, slope 0 (symmetric), residuals -0.4 / +0.6 -> scatter 1.0
    assert sparse_summary.line_fit([0.0, 1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.0, 1.0), abs=1e-12)
    # 0, 0, 0, 0, 1: slope = sum((i-2)*(v-0.2)) / 10 = (0.4 + 0.2 - 0.2 + 1.6) / 10 = 0.2, climb 0.8;
    # line at i=0..4: -0.2, 0, 0.2, 0.4, 0.6 -> residuals 0.2, 0, -0.2, -0.4, 0.4 -> scatter 0.8
    assert sparse_summary.line_fit([0.0, 0.0, 0.0, 0.0, 1.0]) == pytest.approx((0.8, 0.8), abs=1e-12)


def test_run_stats_hand_worked():
    stats = sparse_summary.run_stats(curve(
        [0.00, 0.01, 0.05, 0.10, 0.12, 0.11, 0.13, 0.12],
        [0.00, 0.02, 0.10, 0.20, 0.24, 0.22, 0.26, 0.24]))
    # last 5 mAP50-95: 0.10, 0.12, 0.11, 0.13, 0.12 -> swing 0.03; best 0.13 is 0.01 above the last
    assert stats["swing"] == pytest.approx(0.03)
    assert stats["best_gap"] == pytest.approx(0.01)
    # slope = (-2*-0.016 + -1*0.004 + 0*-0.006 + 1*0.014 + 2*0.004) / 10 = 0.005 -> climb 0.02
    assert stats["climb"] == pytest.approx(0.02)
    # plateau exit: the first epoch whose mAP50 is above half the final 0.24 (0.12): epoch 4
    assert stats["plateau"] == 4
    assert stats["epochs"] == 8
