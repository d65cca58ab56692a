"""The per-epoch curve's figures (detforge.bench.curves) and `bench stability runs=`, on
hand-written run folders whose figures are worked out below."""

from __future__ import annotations

import csv
import json

import pytest

from detforge.bench.curves import curve_figures, read_curve
from detforge.bench.stability import run_stability
from detforge.config import ConfigError

# epoch 6 trained without a validation (val_period), so its metric cells are blank
CURVE = [  # epoch, mAP50-95, mAP50
    (1, 0.00, 0.00), (2, 0.05, 0.10), (3, 0.15, 0.30), (4, 0.25, 0.50), (5, 0.32, 0.60), (6, None, None),
    (7, 0.30, 0.70),
]


def _write_run(folder, curve, seed, best):
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", "lr", "map50_95", "map50", "time"])
        for epoch, m, m50 in curve:
            w.writerow([epoch, 1.0, 1e-3, "" if m is None else m, "" if m50 is None else m50, 1.0])
    (folder / "metrics.json").write_text(json.dumps({"map50_95": best[0], "map50": best[1], "epoch": best[2]}))
    (folder / "config.yaml").write_text(f"model: dfine-n\nseed: {seed}\n")
    return folder


def test_curve_figures_hand_worked(tmp_path):
    run = _write_run(tmp_path / "a", CURVE, 0, (0.32, 0.60, 5))
    curve = read_curve(run / "metrics.csv")
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4, 5, 7]  # the unvalidated epoch is left out
    got = curve_figures(curve)
    assert got["last_map50_95"] == 0.30 and got["last_map50"] == 0.70
    # half the last mAP50 is 0.35: epoch 3 (0.30) is not above it, epoch 4 (0.50) is
    assert got["exit_epoch"] == 4
    # the last five validated epochs are 2, 3, 4, 5, 7: mAP50-95 0.05 .. 0.32
    assert got["last5_swing"] == pytest.approx(0.27)
    assert got["best_minus_last"] == pytest.approx(0.02)  # best 0.32 at epoch 5
    # their least-squares line: x mean 4.2, y mean 0.214, Sxx 14.8, Sxy 0.756; over epochs 2-7
    assert got["last5_rise"] == pytest.approx(0.756 / 14.8 * 5)
    # a straight climb of 0.01 an epoch: all of its swing is rise
    line = curve_figures([{"epoch": e, "map50_95": 0.01 * e, "map50": 0.02 * e} for e in range(1, 11)])
    assert line["last5_swing"] == pytest.approx(0.04) and line["last5_rise"] == pytest.approx(0.04)
    # a run that never found anything has no plateau to leave; no validation, no figures
    assert "exit_epoch" not in curve_figures([{"epoch": 1, "map50_95": 0.0, "map50": 0.0}])
    assert curve_figures([]) == {}


def test_read_curve_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        read_curve(tmp_path / "metrics.csv")
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,2.0\n")
    with pytest.raises(ValueError, match="no column map50, map50_95"):
        read_curve(tmp_path / "metrics.csv")


def test_stability_summarises_finished_runs(tmp_path, capsys):
    a = _write_run(tmp_path / "a", CURVE, 3, (0.32, 0.60, 5))
    flat = [(e, 0.40, 0.80) for e in range(1, 8)]
    b = _write_run(tmp_path / "b", flat, 4, (0.40, 0.80, 1))
    assert run_stability({"runs": f"{a},{b}", "project": str(tmp_path), "name": "stab"}) == 0
    out = tmp_path / "stab"
    rows = list(csv.DictReader(open(out / "stability.csv")))
    assert [r["seed"] for r in rows] == ["3", "4", "mean", "std"]
    assert [r["run"] for r in rows[:2]] == ["a", "b"]
    summary = json.loads((out / "stability.json").read_text())["summary"]
    assert summary["map50_95"]["mean"] == pytest.approx(0.36)  # best.pt: 0.32 and 0.40
    assert summary["last_map50_95"]["mean"] == pytest.approx(0.35)  # last epochs: 0.30 and 0.40
    assert summary["exit_epoch"]["mean"] == pytest.approx(2.5)  # epochs 4 and 1
    assert summary["last5_swing"]["mean"] == pytest.approx(0.135)  # 0.27 and 0
    assert summary["last5_swing"]["std"] == pytest.approx(0.27 / 2 ** 0.5)
    assert summary["last5_rise"]["max"] == pytest.approx(0.756 / 14.8 * 5) and summary["last5_rise"]["min"] == 0.0
    text = capsys.readouterr().out
    assert "per-epoch curve:" in text and "exit_epoch" in text


def test_stability_runs_refusals(tmp_path):
    with pytest.raises(ConfigError, match="no metrics.json"):
        run_stability({"runs": str(tmp_path), "project": str(tmp_path)})
    with pytest.raises(ConfigError, match="model would not be used"):
        run_stability({"runs": str(tmp_path), "model": "dfine-n"})
    with pytest.raises(ConfigError, match="give one"):
        run_stability({"runs": str(tmp_path), "seeds": 2})
