"""The run's per-epoch record: metrics.csv, TensorBoard and the experiment trackers."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger("detforge")
METRIC_KEYS = ("map50_95", "map50", "map75", "precision", "recall", "f1", "iou", "segm_map50_95", "segm_map50", "segm_map75")


def tensorboard_writer(save_dir: Path, loggers: list[str]):
    if "tensorboard" not in loggers:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOG.warning("logger=tensorboard: tensorboard is not installed; skipping")
        return None
    return SummaryWriter(str(save_dir))


class RunLog:
    """One row per epoch, rewritten whole each time so a resumed run's file stays complete."""

    def __init__(self, save_dir: Path, loggers: list[str], project: str, config: dict[str, Any],
                 history: list[dict[str, Any]] | None = None) -> None:
        self.save_dir = save_dir
        self.history: list[dict[str, Any]] = list(history or [])
        self.tb = tensorboard_writer(save_dir, loggers)
        self.trackers = []
        if set(loggers) - {"tensorboard"}:
            from detforge.engine.loggers import start_trackers

            self.trackers = start_trackers(loggers, Path(project).name, save_dir.name, config)

    def epoch_row(self, epoch: int, losses: dict[str, float], lr: float, metrics: dict[str, Any],
                  seconds: float) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({k: round(v, 6) for k, v in losses.items()})
        row["lr"] = lr
        for k in METRIC_KEYS + ("fitness",):
            if k in metrics:
                row[k] = round(float(metrics[k]), 6)
        row["time"] = round(seconds, 2)
        return row

    def write(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        fields = list(dict.fromkeys(k for r in self.history for k in r))
        with open(self.save_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.history)
        epoch = row["epoch"]
        if self.tb:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    group = "train" if k.startswith("loss") else ("lr" if k == "lr" else "metrics")
                    self.tb.add_scalar(f"{group}/{k}", v, epoch)
            self.tb.flush()
        if self.trackers:
            from detforge.engine.loggers import log_all

            log_all(self.trackers, row, epoch)

    def finish(self, files: list[Path]) -> None:
        if self.trackers:
            from detforge.engine.loggers import finish_all

            finish_all(self.trackers, files)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
