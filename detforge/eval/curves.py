"""Figures read off a run's per-epoch validation curve (its metrics.csv).

The end figure of one run hides how it got there. These say whether a run can be trusted
on a small validation set:

- ``exit_epoch``: the first epoch whose mAP50 is above half the last epoch's: when the run
  left the ~0 plateau a detector from scratch starts on;
- ``last5_swing``: max - min of mAP50-95 over the last ``SWING_EPOCHS`` validated epochs: how
  much the figure would change had the run stopped a little earlier;
- ``last5_rise``: over the same epochs, the rise of mAP50-95 along its least-squares line
  (slope times the epochs spanned): a swing about equal to the rise is a run still climbing
  (more epochs would pay), a swing well above it is scatter;
- ``best_minus_last``: the best epoch's mAP50-95 minus the last one's: what picking best.pt
  over last.pt is worth.

``last_map50_95`` and ``last_map50`` are the last epoch's figures (best.pt's are in
metrics.json). ``detforge train`` writes these figures to metrics.json ("curve") and, when
``still_climbing`` says so, ends with a hint that the run was too short for its data.
"""

from __future__ import annotations

import csv
from pathlib import Path

SWING_EPOCHS = 5
CURVE_METRICS = ("last_map50_95", "last_map50", "exit_epoch", "last5_swing", "last5_rise", "best_minus_last")
# a run is still climbing when its last SWING_EPOCHS validated epochs rose at least this much
# along their least-squares line (the swing a settled run on a 40-image val split stays within)
CLIMB_MIN_RISE = 0.02
# ... and that rise is most of their swing: a swing well above its rise is scatter, which more
# epochs do not cure (D-FINE's sparse runs that kept climbing had swing = rise within 0.004)
CLIMB_MIN_SHARE = 0.75


def read_curve(metrics_csv: Path) -> list[dict[str, float]]:
    """The validated epochs of ``metrics_csv`` as {"epoch", "map50_95", "map50"} rows, in order
    (epochs trained without a validation, under ``val_period`` > 1, are left out)."""
    path = Path(metrics_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a run folder holds metrics.csv once an epoch has ended)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"epoch", "map50_95", "map50"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ValueError(f"{path}: no column {', '.join(sorted(missing))}; is this a detforge metrics.csv?")
    return curve_from_rows(rows)


def curve_from_rows(rows: list[dict]) -> list[dict[str, float]]:
    """``read_curve``'s rows from metrics.csv-like records (strings or numbers; a row without
    mAP50-95 is an epoch trained without a validation and is left out)."""
    return [{"epoch": int(r["epoch"]), "map50_95": float(r["map50_95"]), "map50": float(r["map50"])}
            for r in rows if r.get("map50_95") not in (None, "")]


def curve_figures(curve: list[dict[str, float]]) -> dict[str, float]:
    """``CURVE_METRICS`` for a curve from ``read_curve`` ({} without a validated epoch;
    no ``exit_epoch`` when the last mAP50 is 0, where there is no plateau to leave)."""
    if not curve:
        return {}
    last = curve[-1]
    tail = [c["map50_95"] for c in curve[-SWING_EPOCHS:]]
    out: dict[str, float] = {
        "last_map50_95": last["map50_95"],
        "last_map50": last["map50"],
        "last5_swing": max(tail) - min(tail),
        "last5_rise": _line_rise([c["epoch"] for c in curve[-SWING_EPOCHS:]], tail),
        "best_minus_last": max(c["map50_95"] for c in curve) - last["map50_95"],
    }
    if last["map50"] > 0:
        out["exit_epoch"] = next(c["epoch"] for c in curve if c["map50"] > last["map50"] / 2)
    return out


def still_climbing(figures: dict[str, float], validated_epochs: int) -> bool:
    """Whether a run with these ``curve_figures`` over ``validated_epochs`` was still rising at
    its end: at least ``SWING_EPOCHS`` validated epochs whose line rose by ``CLIMB_MIN_RISE`` or
    more, making up ``CLIMB_MIN_SHARE`` of their swing or more."""
    if validated_epochs < SWING_EPOCHS or "last5_rise" not in figures:
        return False
    rise, swing = figures["last5_rise"], figures["last5_swing"]
    return rise >= CLIMB_MIN_RISE and rise >= CLIMB_MIN_SHARE * swing


def _line_rise(x: list[int], y: list[float]) -> float:
    """Rise of the least-squares line through (x, y) from the first x to the last (0 for one point)."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return 0.0
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    return slope * (x[-1] - x[0])
