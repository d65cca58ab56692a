"""Experiment trackers beside the run folder: Weights & Biases, ClearML, MLflow.

Each is used only when asked for (``logger=wandb`` or ``logger=[tensorboard,mlflow]``) and
installed; a tracker that is asked for but missing is reported once, and the run goes on
(the run folder always holds everything). TensorBoard is handled by the trainer itself."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

LOG = logging.getLogger("detforge")


class Tracker:
    def __init__(self, kind: str, module: Any) -> None:
        self.kind, self.m, self.handle = kind, module, None

    def start(self, project: str, name: str, config: dict[str, Any]) -> None:
        if self.kind == "wandb":
            self.handle = self.m.init(project=project, name=name, config=config)
        elif self.kind == "mlflow":
            self.m.set_experiment(project)
            self.handle = self.m.start_run(run_name=name)
            self.m.log_params({k: str(v)[:250] for k, v in config.items()})
        elif self.kind == "clearml":
            self.handle = self.m.Task.init(project_name=project, task_name=name)
            self.handle.connect(config)

    def log(self, row: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
        if self.kind == "wandb":
            self.m.log(scalars, step=step)
        elif self.kind == "mlflow":
            self.m.log_metrics(scalars, step=step)
        elif self.kind == "clearml":
            logger = self.handle.get_logger()
            for k, v in scalars.items():
                logger.report_scalar(title=k.split("_")[0], series=k, value=v, iteration=step)

    def finish(self, files: list[Path]) -> None:
        existing = [p for p in files if p.is_file()]
        if self.kind == "wandb":
            for p in existing:
                self.m.save(str(p), policy="now")
            self.m.finish()
        elif self.kind == "mlflow":
            for p in existing:
                self.m.log_artifact(str(p))
            self.m.end_run()
        elif self.kind == "clearml":
            for p in existing:
                self.handle.upload_artifact(p.name, artifact_object=str(p))
            self.handle.close()


def start_trackers(kinds: list[str], project: str, name: str, config: dict[str, Any]) -> list[Tracker]:
    trackers = []
    for kind in kinds:
        if kind == "tensorboard":
            continue
        try:
            module = importlib.import_module(kind)
        except ImportError:
            LOG.warning("logger=%s: the %s package is not installed (pip install %s); logging to the run folder only",
                        kind, kind, kind)
            continue
        tracker = Tracker(kind, module)
        try:
            tracker.start(project, name, config)
        except Exception as e:  # a tracker's server being down must not cost the run
            LOG.warning("logger=%s could not start (%s: %s); continuing without it", kind, type(e).__name__, e)
            continue
        trackers.append(tracker)
    return trackers


def log_all(trackers: list[Tracker], row: dict[str, Any], step: int) -> None:
    for t in list(trackers):
        try:
            t.log(row, step)
        except Exception as e:
            LOG.warning("logger=%s failed to log (%s); dropping it for this run", t.kind, e)
            trackers.remove(t)


def finish_all(trackers: list[Tracker], files: list[Path]) -> None:
    for t in trackers:
        try:
            t.finish(files)
        except Exception as e:
            LOG.warning("logger=%s failed to finish (%s)", t.kind, e)
