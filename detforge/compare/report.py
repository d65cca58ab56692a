"""What a comparison leaves behind: compare.csv (a row per dataset and model), compare.json
(settings, machine, rows, Pareto fronts, recommendations, mean ranks) and compare.png
(mAP50-95 against p50 latency per dataset, the Pareto front drawn as a step line)."""

from __future__ import annotations

import csv
import json
import math
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detforge.bench.report import markdown_table

CSV_FIELDS = ("dataset", "model", "map50_95", "map50", "precision", "recall", "f1", "p50_ms", "p90_ms", "avg_ms",
              "throughput", "pareto", "params_m", "epochs", "train_s", "split", "imgsz", "runtime", "batch", "run_dir",
              "model_file")
TABLE = [("model", "model", ""), ("map50_95", "mAP50-95", ".3f"), ("map50", "mAP50", ".3f"), ("f1", "F1", ".3f"),
         ("p50_ms", "p50 ms", ".1f"), ("p90_ms", "p90 ms", ".1f"), ("params_m", "params (M)", ".2f"),
         ("epochs", "epochs", ""), ("train_min", "train (min)", ".1f"), ("front", "Pareto", "")]


def table_text(rows: Sequence[Mapping[str, Any]]) -> str:
    shown = [{**r, "train_min": float(r.get("train_s") or 0) / 60, "front": "yes" if r["pareto"] else ""}
             for r in sorted(rows, key=lambda r: -r["map50_95"])]
    return markdown_table(shown, TABLE)


def ranks_text(ranks: Mapping[str, Mapping[str, Any]], datasets: Sequence[str]) -> str:
    rows = [{"model": m, "mean_rank": v["mean_rank"],
             **{d: (format(v["ranks"][d], "g") if d in v["ranks"] else "-") for d in datasets}}
            for m, v in ranks.items()]
    return markdown_table(rows, [("model", "model", ""), ("mean_rank", "mean rank (mAP50-95)", ".2f"),
                                 *[(d, d, "") for d in datasets]])


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return path


def machine() -> dict[str, Any]:
    import os

    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}
    for mod in ("onnxruntime", "openvino"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed: nothing to record
            pass
    return info


def write_json(payload: Mapping[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def plot(per_dataset: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str) -> Path:
    """One panel per dataset: each model a point (mAP50-95 over p50 ms), the front's points
    filled and joined by the step line that bounds what can be had at each latency."""
    n = len(per_dataset)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig = Figure(figsize=(6.4 * cols, 4.8 * rows_n), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows_n, cols, squeeze=False)).ravel()
    for ax, (dataset, rows) in zip(axes, per_dataset.items()):
        lat = np.array([r["p50_ms"] for r in rows], float)
        acc = np.array([r["map50_95"] for r in rows], float)
        front = np.array([bool(r["pareto"]) for r in rows])
        ax.scatter(lat[~front], acc[~front], s=40, facecolors="none", edgecolors="tab:gray", label="dominated")
        ax.scatter(lat[front], acc[front], s=50, color="tab:blue", zorder=3, label="Pareto front")
        order = np.argsort(lat[front])
        if front.sum() > 1:
            ax.step(lat[front][order], acc[front][order], where="post", color="tab:blue", lw=1.2, alpha=0.7)
        for r, x, y in zip(rows, lat, acc):
            ax.annotate(r["model"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if lat.size and lat.max() / max(lat.min(), 1e-9) > 20:
            ax.set_xscale("log")
        ax.margins(x=0.18, y=0.08)  # room for the labels of the outermost points
        ax.set_xlabel("p50 latency (ms)")
        ax.set_ylabel("mAP50-95")
        ax.set_title(dataset, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)  # off the points
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
