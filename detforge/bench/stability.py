"""`detforge bench stability seeds=5 [train keys ...]`: train one configuration with seeds
0..N-1 and report the mean and standard deviation of every metric over the seeds (the
training-stability table of seed 002).

Each seed is a full run in ``<project>/<name>/seed<k>``; the table goes to the terminal and to
``stability.csv`` (one row per seed, then ``mean`` and ``std`` rows) and ``stability.json``
beside them. The standard deviation is the sample one (ddof=1: the seeds are a sample of
possible runs); with one seed it is 0. Works under torchrun too: every rank trains, rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from detforge.config import ConfigError, KeysRequested, build_config

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
    keys = list(summary)
    lines = ["seed  " + "  ".join(f"{k:>9s}" for k in keys)]
    for r in rows:
        lines.append(f"{r['seed']:<4d}  " + "  ".join(f"{r[k]:9.4f}" if k in r else f"{'-':>9s}" for k in keys))
    lines.append("mean  " + "  ".join(f"{summary[k]['mean']:9.4f}" for k in keys))
    lines.append("std   " + "  ".join(f"{summary[k]['std']:9.4f}" for k in keys))
    return "\n".join(lines)


def write_results(out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> None:
    keys = ["seed", "best_epoch", *summary]
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


def run_stability(args: dict) -> int:
    """Train ``args`` (TrainConfig keys) once per seed 0..seeds-1 (``seeds``, default 5) and
    report mean and standard deviation of each metric. Returns the exit code."""
    from detforge.engine import distributed as dist_utils
    from detforge.engine.trainer import Trainer
    from detforge.utils.runtime import increment_path, select_device

    args = dict(args)
    if args.pop("help", False):
        raise KeysRequested("usage: detforge bench stability seeds=N [train keys]: trains once per seed 0..N-1 "
                            "(default 5) and reports each metric's mean and std; `detforge help keys train` "
                            "lists the train keys")
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
    for seed in range(seeds):
        cfg = build_config({**args, "seed": seed, "project": str(out_dir), "name": f"seed{seed}", "exist_ok": True})
        metrics = Trainer(cfg).train()
        rows.append({"seed": seed, "best_epoch": int(metrics.get("epoch", 0)),
                     **{k: float(metrics[k]) for k in STABILITY_METRICS if k in metrics}})
    summary = summarize(rows)
    if info.is_main:
        write_results(out_dir, rows, summary)
        print(format_table(rows, summary))
        print(f"results: {out_dir / 'stability.csv'}")
    return 0
