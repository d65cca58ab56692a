"""The per-epoch curve's figures (detforge.eval.curves), the end-of-run hint of a run still
climbing, and `bench stability runs=`, on hand-written run folders whose figures are worked
out below."""

from __future__ import annotations

import csv
import json

import pytest

from detforge.engine.run_report import training_length_hint
from detforge.eval.curves import curve_figures, curve_from_rows, read_curve, still_climbing
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


def _line(per_epoch, epochs=10, wobble=0.0):
    """mAP50-95 rising ``per_epoch`` each epoch from 0.1, odd epochs ``wobble`` higher."""
    return [{"epoch": e, "map50_95": 0.1 + per_epoch * e + wobble * (e % 2), "map50": 0.5} for e in range(1, epochs + 1)]


def test_still_climbing_needs_a_rise_that_is_most_of_the_swing():
    # 0.01 an epoch: a rise of 0.04 over epochs 6-10, all of the swing
    assert still_climbing(curve_figures(_line(0.01)), 10)
    # 0.004 an epoch: rise 0.016, under CLIMB_MIN_RISE (0.02): settled enough
    assert not still_climbing(curve_figures(_line(0.004)), 10)
    # level with a 0.05 wobble: epochs 6-10 read 0.10 0.15 0.10 0.15 0.10, swing 0.05, rise 0
    wobble = curve_figures(_line(0.0, wobble=0.05))
    assert wobble["last5_swing"] == pytest.approx(0.05) and not still_climbing(wobble, 10)
    # 0.01 an epoch with a 0.03 wobble: epochs 6-10 read 0.16 0.20 0.18 0.22 0.20; swing 0.06;
    # line: x mean 8, y mean 0.192, Sxy 0.1, Sxx 10: rise 0.01 * 4 = 0.04, under 0.75 * 0.06
    mixed = curve_figures(_line(0.01, wobble=0.03))
    assert mixed["last5_swing"] == pytest.approx(0.06) and mixed["last5_rise"] == pytest.approx(0.04)
    assert not still_climbing(mixed, 10)
    # fewer validated epochs than the window: no judgement
    assert not still_climbing(curve_figures(_line(0.05, epochs=4)), 4)
    # metrics.csv rows as the trainer holds them (numbers; an unvalidated epoch without mAP)
    rows = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0, "map50_95": 0.2, "map50": 0.4}]
    assert curve_from_rows(rows) == [{"epoch": 2, "map50_95": 0.2, "map50": 0.4}]


def test_training_length_hint_counts_the_steps_and_names_the_settings():
    # 25 epochs of 10 steps climbing 0.01 an epoch: the D-FINE-N sparse runs' shape
    hint = training_length_hint(_line(0.01, epochs=25), batch=16, accumulate=1, steps_per_epoch=10, epochs=25)
    assert hint == ("mAP50-95 was still climbing at the end: +0.040 along a line over the last 5 validated "
                    "epochs (they moved 0.040), in 250 optimizer steps (10 an epoch). More training would "
                    "likely pay: batch=8 (the same images, 2x the steps) or epochs=50.")
    # with accumulation, the accumulation is what halves (3 -> 1 is three times the steps)
    hint = training_length_hint(_line(0.01), batch=16, accumulate=3, steps_per_epoch=4, epochs=10)
    assert "in 40 optimizer steps (4 an epoch)" in hint and "accumulate=1 (the same images, 3x the steps) or epochs=20" in hint
    # batch 1 has no half: only more epochs
    assert training_length_hint(_line(0.01), batch=1, accumulate=1, steps_per_epoch=50, epochs=10).endswith(
        "likely pay: epochs=20.")
    # a settled run gets no hint
    assert training_length_hint(_line(0.0, wobble=0.05), batch=16, accumulate=1, steps_per_epoch=10, epochs=10) is None


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
    # both runs' curves on one figure, 1100 x 420 px
    import cv2

    image = cv2.imread(str(out / "curves.png"))
    assert f"curves: {out / 'curves.png'}" in text and image.shape == (420, 1100, 3) and image.std() > 10


def test_stability_curves_label_folders_of_one_name_by_project(tmp_path, capsys, monkeypatch):
    from detforge.eval import plots

    drawn = {}
    monkeypatch.setattr(plots, "plot_run_curves", lambda curves, out: drawn.update(curves) or out)
    runs = [_write_run(tmp_path / p / "seed0", CURVE, 0, (0.32, 0.60, 5)) for p in ("x", "y")]
    assert run_stability({"runs": ",".join(map(str, runs)), "project": str(tmp_path), "name": "stab"}) == 0
    assert list(drawn) == ["x/seed0", "y/seed0"] and [c["epoch"] for c in drawn["x/seed0"]] == [1, 2, 3, 4, 5, 7]


def test_stability_runs_refusals(tmp_path):
    with pytest.raises(ConfigError, match="no metrics.json"):
        run_stability({"runs": str(tmp_path), "project": str(tmp_path)})
    with pytest.raises(ConfigError, match="model would not be used"):
        run_stability({"runs": str(tmp_path), "model": "dfine-n"})
    with pytest.raises(ConfigError, match="give one"):
        run_stability({"runs": str(tmp_path), "seeds": 2})
