"""benchmarks/ema_sweep.py: extra EMA ramps scored beside a run without changing the run."""

import csv
import importlib.util
import math
from pathlib import Path

import pytest

from detforge.engine.trainer import Trainer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ema_sweep.py"
spec = importlib.util.spec_from_file_location("ema_sweep", SCRIPT)
ema_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ema_sweep)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_leaves_the_run_as_it_was_and_scores_each_ramp(synthetic_root, tmp_path):
    args = [f"data={synthetic_root}", "model=dfine-n", "imgsz=64", "batch=8", "epochs=2", "workers=0",
            "device=cpu", "seed=3", "ema_warmup=7", f"project={tmp_path}", "verbose=false", "plots=false"]
    assert ema_sweep.main(["--ramps", "7", "2", "--", *args, "name=sweep"]) == 0
    plain = Trainer(ema_sweep.resolve_train_config(ema_sweep.parse_args([*args, "name=plain"])))
    plain.train()

    run, ref = rows(tmp_path / "sweep" / "metrics.csv"), rows(tmp_path / "plain" / "metrics.csv")
    assert len(run) == len(ref) == 2
    for a, b in zip(run, ref):  # the extra averages and scoring passes leave training untouched
        for key in ("loss", "map50_95", "map50"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-6), key

    # a ramp equal to the run's own is the run's own EMA: the same scores every epoch
    same = rows(tmp_path / "sweep" / "ema_sweep" / "ramp7" / "metrics.csv")
    assert [int(r["epoch"]) for r in same] == [1, 2]
    for a, b in zip(same, run):
        assert float(a["map50_95"]) == pytest.approx(float(b["map50_95"]), abs=1e-5)
        assert float(a["map50"]) == pytest.approx(float(b["map50"]), abs=1e-5)
    # 48 images at batch 8: 6 steps per epoch; decay 0.9999 * (1 - exp(-t / ramp)) after t steps
    short = rows(tmp_path / "sweep" / "ema_sweep" / "ramp2" / "metrics.csv")
    for r, steps in zip(short, (6, 12)):
        assert float(r["ema_decay_end"]) == pytest.approx(0.9999 * (1 - math.exp(-steps / 2)), abs=1e-4)
    for r, steps in zip(same, (6, 12)):
        assert float(r["ema_decay_end"]) == pytest.approx(0.9999 * (1 - math.exp(-steps / 7)), abs=1e-4)


def test_sweep_refuses_what_it_cannot_compare(synthetic_root, tmp_path):
    base = [f"data={synthetic_root}", "model=dfine-n", f"project={tmp_path}"]
    with pytest.raises(SystemExit, match="val_period"):
        ema_sweep.main(["--ramps", "5", "--", *base, "val_period=2"])
    with pytest.raises(SystemExit, match="ema=false"):
        ema_sweep.main(["--ramps", "5", "--", *base, "ema=false"])
    with pytest.raises(SystemExit, match="usage"):
        ema_sweep.main(["--ramps", "5"])
