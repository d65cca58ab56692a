"""Several EMA ramps from one training run: each extra ramp is the same trained weights averaged
differently, so one run answers "which ``ema_warmup``?" at the cost of one validation pass per
ramp and epoch instead of one training per ramp.

The EMA never feeds back into training, so a run with ``ema_warmup=W`` trains exactly the weights
of any other ramp with the same seed; this script keeps one extra ``ModelEMA`` per ramp beside
the run's own, updates each after every optimizer step, and scores each after every epoch with
detforge's validator. The random-number state is saved and restored around the extra scoring
passes, so they cannot shift a random draw of the run: its metrics.csv and checkpoints are those
of ``detforge train`` with the same arguments (tests/test_ema_sweep.py checks both).

    python benchmarks/ema_sweep.py --ramps 80 150 -- model=dfine-n data=/work/data/bccd_wbc \\
        imgsz=416 batch=16 epochs=25 workers=0 device=cpu seed=1 name=wbc_s1

Each ramp W gets ``RUN/ema_sweep/ramp<W>/metrics.csv`` (epoch, map50_95, map50, ema_decay_end),
a folder ``benchmarks/sparse_summary.py`` takes as a run. Not resumable: the extra averages are
not in last.pt, so an interrupted sweep starts again.
"""

from __future__ import annotations

import argparse
import csv
import sys

from detforge.cli import parse_args
from detforge.engine import parallel
from detforge.engine.checkpoint import rng_state, set_rng_state
from detforge.engine.ema import ModelEMA
from detforge.engine.resolve import resolve_train_config
from detforge.engine.trainer import Trainer
from detforge.engine.validator import evaluate


class SweepTrainer(Trainer):
    """A Trainer that also keeps and scores one EMA per extra ramp."""

    def __init__(self, resolved, ramps: list[int]) -> None:
        super().__init__(resolved)
        self.ramps = ramps
        self.in_epoch_loop = True  # False once finish() re-scores best.pt

    def setup(self) -> None:
        super().setup()
        if self.resume_from is not None:
            raise SystemExit("ema_sweep: the extra EMAs are not in last.pt; start the sweep in a new run folder")
        self.extra = {w: ModelEMA(self.model, decay=self.cfg.ema_decay, warmup=w) for w in self.ramps}
        self.sweep_dir = self.save_dir / "ema_sweep"
        for w in self.ramps:
            out = self.sweep_dir / f"ramp{w}"
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "metrics.csv", "w", newline="") as f:
                csv.writer(f).writerow(["epoch", "map50_95", "map50", "ema_decay_end"])
        self.epoch_no = 0

    def _optimizer_step(self) -> None:
        super()._optimizer_step()
        for ema in self.extra.values():
            ema.update(parallel.ema_source(self.model))

    def finish(self, last_metrics):
        self.in_epoch_loop = False
        return super().finish(last_metrics)

    def validate(self):
        metrics, evaluator = super().validate()
        if self.in_epoch_loop:
            self.epoch_no += 1
            saved = rng_state()
            for w, ema in self.extra.items():
                m, _, _ = evaluate(ema.module, self.val_loader, self.names, self.cfg.conf, self.cfg.iou_thr,
                                   self.device, self.amp_dtype, self.cfg.max_det, show=False)
                with open(self.sweep_dir / f"ramp{w}" / "metrics.csv", "a", newline="") as f:
                    csv.writer(f).writerow([self.epoch_no, f"{m['map50_95']:.5f}", f"{m['map50']:.5f}",
                                            f"{ema.decay_at(ema.updates):.4f}"])
                print(f"ema_sweep epoch {self.epoch_no} ramp {w}: mAP50-95 {m['map50_95']:.4f} "
                      f"mAP50 {m['map50']:.4f}", flush=True)
            set_rng_state(saved)
        return metrics, evaluator


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: ema_sweep.py --ramps W [W ...] -- <detforge train key=value ...>")
    split = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ramps", type=int, nargs="+", required=True, help="extra ema_warmup values (steps)")
    args = ap.parse_args(argv[:split])
    train_args = parse_args(argv[split + 1:])
    if str(train_args.get("val_period", 1)) != "1":
        raise SystemExit("ema_sweep: scores every epoch; leave val_period at 1")
    resolved = resolve_train_config(train_args)
    if not resolved.cfg.ema:
        raise SystemExit("ema_sweep: the run has ema=false; the sweep compares EMA ramps")
    SweepTrainer(resolved, args.ramps).train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
