"""What a comparison will do, read from its settings and from what is already on disk.

The comparison folder is ``project/name`` (default ``runs/compare``) and is the same on every
call with the same settings, so running the command again continues it:

    runs/compare/
      compare.csv  compare.json  compare.png      the result (all datasets)
      <dataset>/<model>/                          a normal run folder per model (train's layout)
      <dataset>/exports/<model>_<imgsz>_b<batch>.onnx|.xml
      <dataset>/val/<model>/metrics.json          the common evaluation

A model whose run folder holds ``metrics.json`` newer than its ``weights/last.pt`` finished and
is not trained again; one with only ``last.pt`` was interrupted and resumes from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detforge.config import ConfigError
from detforge.utils.lists import split_list

# train keys a comparison passes on to every model's run (when the user set them)
TRAIN_KEYS = ("device", "workers", "seed", "fraction", "conf", "iou_thr", "max_det", "verbose", "plots")


def dataset_tags(datasets: list[str | None]) -> list[str]:
    """A short folder name per dataset: its folder's name (``synthetic`` for the built-in set),
    numbered when two would collide."""
    tags: list[str] = []
    for d in datasets:
        if d is None:
            base = "synthetic"
        else:
            p = Path(d)
            base = (p.parent.name if p.suffix in (".yaml", ".yml") else p.name) or "data"
        tag, n = base, 2
        while tag in tags:
            tag, n = f"{base}-{n}", n + 1
        tags.append(tag)
    return tags


@dataclass
class CompareSettings:
    datasets: list[str | None]
    tags: list[str]
    models: list[str]
    runs: list[Path]
    epochs: int
    imgsz: int
    imgsz_given: bool
    latency_batch: int
    threads: int | None
    runtime: str
    device: str
    max_latency_ms: float | None
    latency_iters: int
    split: str | None
    out: Path
    train_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, given: set[str]) -> CompareSettings:
        from detforge.models.zoo import get_spec

        models = [m.lower() for m in split_list(cfg.models)]
        for m in models:
            if m.endswith(".pt"):
                raise ConfigError(f"models= takes model names; rank a trained checkpoint with runs={Path(m).parent.parent}")
            get_spec(m)  # an unknown name fails now, not hours into the comparison
        runs = [Path(r) for r in split_list(cfg.runs)]
        for r in runs:
            if not (r / "weights" / "best.pt").is_file():
                raise ConfigError(f"runs={r}: no weights/best.pt there (runs= takes finished run folders)")
        if not models and not runs:
            raise ConfigError("compare needs models=NAME,NAME (trained here) and/or runs=DIR,DIR (finished runs)")
        datasets: list[str | None] = list(split_list(cfg.data)) or [None]
        if runs and len(datasets) > 1:
            raise ConfigError("runs= were trained on one dataset: give one data= with them")
        batch = cfg.batch if "batch" in given else 1
        if batch < 1 or not float(batch).is_integer():
            raise ConfigError(f"compare: batch={batch} is the latency batch and must be a whole number >= 1")
        train_args = {k: getattr(cfg, k) for k in TRAIN_KEYS if k in given}
        if cfg.train_batch is not None:
            train_args["batch"] = int(cfg.train_batch)
        return cls(
            datasets=datasets, tags=dataset_tags(datasets), models=models, runs=runs, epochs=int(cfg.epochs),
            imgsz=int(cfg.imgsz), imgsz_given="imgsz" in given, latency_batch=int(batch), threads=cfg.threads,
            runtime=cfg.runtime, device=str(cfg.device), max_latency_ms=cfg.max_latency_ms,
            latency_iters=int(cfg.latency_iters), split=cfg.split if "split" in given else None,
            out=Path(cfg.project) / (cfg.name or "compare"), train_args=train_args,
        )


@dataclass(frozen=True)
class RunState:
    """``action``: "done" (finished: evaluate only), "resume" (from ``last``), or "train"."""

    action: str
    folder: Path
    last: Path | None = None
    epochs_done: int = 0


def _saved_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _same_data(a: Any, b: Any) -> bool:
    if a in (None, "") or b in (None, ""):
        return a in (None, "") and b in (None, "")
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def epochs_logged(folder: Path) -> int:
    """Epochs recorded in metrics.csv (0 when there is none)."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return 0
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return int(float(rows[-1]["epoch"])) if rows and rows[-1].get("epoch") else 0


def run_state(folder: Path, model: str, data: str | None, imgsz: int, epochs: int) -> RunState:
    """What to do with ``folder``, the run folder of ``model`` inside the comparison. A folder
    trained with another model, dataset or image size is refused (the comparison would mix
    settings), with what to change."""
    last, best, metrics = folder / "weights" / "last.pt", folder / "weights" / "best.pt", folder / "metrics.json"
    if not last.is_file():
        return RunState("train", folder)
    saved = _saved_config(folder)
    for key, want, same in (("model", model, lambda a, b: str(a).lower() == str(b).lower()),
                            ("data", data, _same_data), ("imgsz", imgsz, lambda a, b: int(a) == int(b))):
        if key in saved and not same(saved[key], want):
            raise ConfigError(
                f"{folder} holds a run with {key}={saved[key]}, this comparison asks for {key}={want}; "
                "give the comparison another name= (or remove that folder)"
            )
    done = epochs_logged(folder)
    finished = metrics.is_file() and best.is_file() and metrics.stat().st_mtime >= last.stat().st_mtime
    if finished and int(saved.get("epochs", done) or done) >= epochs:
        return RunState("done", folder, last, done)
    return RunState("resume", folder, last, done)
