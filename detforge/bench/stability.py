"""`detforge bench stability seeds=5 [train keys ...]`: train one configuration with seeds
0..N-1 and report the mean and standard deviation of every metric over the seeds (the
training-stability table of seed 002).

Each seed is a full run in ``<project>/<name>/seed<k>``; the table goes to the terminal and to
``stability.csv`` (one row per seed, then ``mean`` and ``std`` rows) and ``stability.json``
beside them. Two tables: best.pt's metrics (metrics.json) and the figures of each run's
per-epoch curve (``detforge.eval.curves``: the last epoch, when mAP50 passed half its final,
the movement of the last 5 epochs, best minus last). The standard deviation is the sample one
(ddof=1: the seeds are a sample of possible runs); with one seed it is 0. Works under torchrun
too: every rank trains, rank 0 writes.

``runs=DIR,DIR`` summarises finished run folders instead of training (seeds trained apart, on
several machines or in turns): the same tables, one row per folder.

``curves.png`` beside the tables draws every run's per-epoch mAP50-95 and mAP50 on shared axes,
each run's exit epoch ringed and its last 5 epochs thick.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from detforge.eval.curves import CURVE_METRICS, curve_figures, read_curve
from detforge.config import ConfigError, KeysRequested, build_config
from detforge.utils.lists import split_list

LOG = logging.getLogger("detforge")
STABILITY_METRICS = ("map50_95", "map50", "map75", "precision", "recall", "f1", "iou", "fitness")


def summarize(rows: list[dict[str, Any]], keys: tuple[str, ...] = STABILITY_METRICS) -> dict[str, dict[str, float]]:
    """{metric: {mean, std, min, max}} over the rows that hold the metric."""
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(r[key]) for r in rows if key in r]
        if not values:
            continue
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "min": min(values), "max": max(values)}
    return out


def format_table(rows: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
    """Two blocks, one row per run then mean and std: best.pt's metrics, then the curve's."""
    width = max([len("mean"), *(len(str(r.get("run", r["seed"]))) for r in rows)])
    blocks = []
    for title, group in (("best.pt", STABILITY_METRICS), ("per-epoch curve", CURVE_METRICS)):
        keys = [k for k in group if k in summary]
        if not keys:
            continue
        w = {k: max(9, len(k)) for k in keys}
        lines = [f"{title}:", f"{'run':<{width}s}  " + "  ".join(f"{k:>{w[k]}s}" for k in keys)]
        for r in rows:
            cells = (f"{r[k]:{w[k]}.4f}" if k in r else f"{'-':>{w[k]}s}" for k in keys)
            lines.append(f"{str(r.get('run', r['seed'])):<{width}s}  " + "  ".join(cells))
        for stat in ("mean", "std"):
            lines.append(f"{stat:<{width}s}  " + "  ".join(f"{summary[k][stat]:{w[k]}.4f}" for k in keys))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_results(out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> None:
    keys = ["seed", "run", "best_epoch", *summary]
    with open(out_dir / "stability.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        for stat in ("mean", "std"):
            w.writerow({"seed": stat, **{k: v[stat] for k, v in summary.items()}})
    (out_dir / "stability.json").write_text(json.dumps({"seeds": rows, "summary": summary}, indent=2))


def _seed_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ConfigError(f"bad value {value!r} for 'seeds': a whole number of seeds >= 1 (e.g. seeds=5)")
    return int(value)


def run_row(run_dir: Path, seed: int, metrics: dict[str, Any], curve: bool = True) -> dict[str, Any]:
    """One table row: a run's best.pt ``metrics`` and, with ``curve``, its curve's figures (its
    metrics.csv, which only the main process of a distributed run writes)."""
    return {"seed": seed, "run": run_dir.name, "best_epoch": int(metrics.get("epoch", 0)),
            **{k: float(metrics[k]) for k in STABILITY_METRICS if k in metrics},
            **(curve_figures(read_curve(run_dir / "metrics.csv")) if curve else {})}


def finished_run_row(run_dir: Path) -> dict[str, Any]:
    """``run_row`` for a finished run folder (its metrics.json, config.yaml and metrics.csv)."""
    import yaml

    if not (run_dir / "metrics.json").is_file():
        raise ConfigError(f"runs={run_dir}: no metrics.json there (runs= takes finished run folders)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = run_dir / "config.yaml"
    seed = int((yaml.safe_load(config.read_text()) or {}).get("seed", 0)) if config.is_file() else 0
    return run_row(run_dir, seed, metrics)


def summarize_runs(args: dict) -> int:
    """``runs=DIR,DIR``: the tables for finished run folders, written to ``project/name``."""
    from detforge.utils.runtime import increment_path

    value = args.pop("runs")
    extra = sorted(set(args) - {"project", "name", "exist_ok"})
    if extra:
        raise ConfigError(f"bench stability runs=: {', '.join(extra)} would not be used (runs= reads finished "
                          "runs; it takes project=, name= and exist_ok= for where the tables go)")
    folders = [Path(v) for v in split_list(value)]
    if not folders:
        raise ConfigError("runs= takes finished run folders, comma-separated: runs=runs/a,runs/b")
    rows = [finished_run_row(f) for f in folders]
    out_dir = increment_path(Path(args.get("project", "runs")) / (args.get("name") or "stability"),
                             bool(args.get("exist_ok", False)))
    out_dir.mkdir(parents=True, exist_ok=True)
    report(out_dir, rows, folders)
    return 0


def report(out_dir: Path, rows: list[dict[str, Any]], run_dirs: list[Path]) -> None:
    """Summarise ``rows``, write stability.csv / .json and curves.png (the per-epoch curves of
    ``run_dirs``, one per row) to ``out_dir`` and print the tables."""
    summary = summarize(rows, STABILITY_METRICS + CURVE_METRICS)
    write_results(out_dir, rows, summary)
    print(format_table(rows, summary))
    print(f"results: {out_dir / 'stability.csv'}")
    try:
        from detforge.eval.plots import plot_run_curves

        names = [d.name for d in run_dirs]
        # runs= may name folders of one name in different projects (seed0, seed0, ...)
        labels = names if len(set(names)) == len(names) else [f"{d.parent.name}/{d.name}" for d in run_dirs]
        curves = {label: read_curve(d / "metrics.csv") for label, d in zip(labels, run_dirs)}
        print(f"curves: {plot_run_curves(curves, out_dir / 'curves.png')}")
    except Exception as e:  # the tables are written; a plot must not turn them into a failure
        LOG.warning("curves.png not drawn: %s: %s", type(e).__name__, e)


def run_stability(args: dict) -> int:
    """Train ``args`` (TrainConfig keys) once per seed 0..seeds-1 (``seeds``, default 5) and
    report mean and standard deviation of each metric. Returns the exit code."""
    from detforge.engine import distributed as dist_utils
    from detforge.engine.trainer import Trainer
    from detforge.utils.runtime import increment_path, select_device

    args = dict(args)
    if args.pop("help", False):
        raise KeysRequested("usage: detforge bench stability seeds=N [train keys]: trains once per seed 0..N-1 "
                            "(default 5) and reports each metric's mean and std, for best.pt and for the "
                            "per-epoch curve (last epoch, exit epoch, last-5 swing, best - last); "
                            "`detforge help keys train` lists the train keys. "
                            "detforge bench stability runs=DIR,DIR: the same for finished run folders")
    if "runs" in args:
        if "seeds" in args:
            raise ConfigError("bench stability: runs= summarises finished runs and seeds= trains new ones; give one")
        return summarize_runs(args)
    seeds = _seed_count(args.pop("seeds", 5))
    if "seed" in args:
        raise ConfigError("bench stability sets seed itself (0..seeds-1): drop seed= and use seeds=N")
    if "resume" in args:
        raise ConfigError("bench stability starts fresh runs: drop resume=")
    name = args.pop("name", None) or "stability"
    base = build_config({**args, "name": name})  # refuse bad keys before any training starts

    info = dist_utils.env_info()
    device = select_device(base.device, info.local_rank if info.enabled else None)
    dist_utils.init_process_group(info, device.type == "cuda")
    out_dir = increment_path(Path(base.project) / name, base.exist_ok) if info.is_main else None
    out_dir = Path(dist_utils.broadcast_object(str(out_dir)))
    LOG.info("bench stability: %d seeds -> %s", seeds, out_dir)

    rows: list[dict[str, Any]] = []
    run_dirs: list[Path] = []
    for seed in range(seeds):
        cfg = build_config({**args, "seed": seed, "project": str(out_dir), "name": f"seed{seed}", "exist_ok": True})
        metrics = Trainer(cfg).train()
        run_dirs.append(Path(metrics["save_dir"]))
        rows.append(run_row(run_dirs[-1], seed, metrics, curve=info.is_main))
    if info.is_main:
        report(out_dir, rows, run_dirs)
    return 0
