"""Training each model of a comparison through the ordinary Trainer, with one progress bar over
every epoch of the whole comparison (which model, which epoch, ETA of the comparison).

The bar follows each run's metrics.csv (one row per finished epoch), so it needs nothing from
the training loop beyond the run folder it writes anyway."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from detforge.compare.plan import RunState, epochs_logged

LOG = logging.getLogger("detforge")
POLL_S = 2.0


class EpochWatcher:
    """Moves ``bar`` forward as rows appear in ``folder``/metrics.csv, in a background thread."""

    def __init__(self, bar: tqdm, folder: Path, label: str, epochs: int, start: int) -> None:
        self.bar, self.folder, self.label, self.epochs = bar, folder, label, epochs
        self.seen = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _describe(self, epoch: int) -> None:
        self.bar.set_description(f"{self.label} epoch {min(epoch + 1, self.epochs)}/{self.epochs}")

    def _poll(self) -> None:
        try:
            done = epochs_logged(self.folder)
        except (OSError, ValueError, KeyError):  # the file is being rewritten: next poll
            return
        if done > self.seen:
            self.bar.update(done - self.seen)
            self.seen = done
            self._describe(done)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def __enter__(self) -> EpochWatcher:
        self._describe(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def train_args(model: str, data: str | None, state: RunState, epochs: int, imgsz: int,
               extra: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's keys for one model: a fresh run in its folder of the comparison, or a
    resume from its last.pt (which keeps the saved settings; only a longer ``epochs`` and the
    machine-side keys may change)."""
    if state.action == "resume":
        keep = {k: v for k, v in extra.items() if k in ("device", "workers", "verbose", "plots")}
        return {"resume": str(state.last), "epochs": epochs, **keep}
    args = {"model": model, "epochs": epochs, "imgsz": imgsz, "project": str(state.folder.parent),
            "name": state.folder.name, "exist_ok": True, **extra}
    if data is not None:
        args["data"] = data
    return args


def train_one(model: str, data: str | None, state: RunState, epochs: int, imgsz: int, extra: dict[str, Any],
              bar: tqdm, label: str) -> None:
    from detforge.config import build_config
    from detforge.engine.trainer import Trainer

    args = train_args(model, data, state, epochs, imgsz, extra)
    if state.action == "resume":
        LOG.info("compare: %s resumes from %s (epoch %d of %d)", label, state.last, state.epochs_done, epochs)
    with EpochWatcher(bar, state.folder, label, epochs, start=state.epochs_done):
        Trainer(build_config(args)).train()  # the keys set here are the run's own; the rest come from defaults and the family
