"""Tables for the sparse-object runs: per arm (several seeds), the last-epoch mAP50-95 / mAP50
(mean +- sample std), best-vs-last gap, the plateau exit (first epoch whose mAP50 is above half
the run's final mAP50) and the swing of mAP50-95 over the final 5 epochs; then one per-epoch
mAP50 row per arm (mean over its seeds). The swing is split into the climb (a least-squares line
through the final 5 epochs, its rise over them) and the scatter around that line (max - min of
the residuals): a run still learning swings by its climb, an unstable one by its scatter.

    python benchmarks/sparse_summary.py \\
        --arm "D-FINE-N default=/work/runs/sparse/syn_base_s*" \\
        --arm "D-FINE-N o2m=/work/runs/sparse/syn_o2m_s*" \\
        --yolo "YOLO11n=/work/runs/sparse/results.jsonl:syn_yolo11n" --plot docs/images/sparse_syn.png

A detforge arm is a glob of run folders (metrics.csv, every epoch scored by detforge's
validator); a YOLO arm is a jsonl written by benchmarks/sparse_yolo.py and the run-name prefix
to take from it (every epoch's checkpoint scored by detforge.eval.evaluate_files).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
from pathlib import Path


def detforge_curve(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{"epoch": int(r["epoch"]), "map50_95": float(r["map50_95"]), "map50": float(r["map50"])}
                for r in csv.DictReader(f) if r.get("map50") not in (None, "")]


def yolo_curves(path: Path, prefix: str) -> list[list[dict]]:
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["run"].startswith(prefix):
            out.append(r["curve"])
    return out


def run_stats(curve: list[dict]) -> dict:
    last = curve[-1]
    best = max(c["map50_95"] for c in curve)
    tail = [c["map50_95"] for c in curve[-5:]]
    half = 0.5 * last["map50"]
    plateau = next((c["epoch"] for c in curve if c["map50"] > half and last["map50"] > 0), None)
    climb, scatter = line_fit(tail)
    return {"map50_95": last["map50_95"], "map50": last["map50"], "best_gap": best - last["map50_95"],
            "swing": max(tail) - min(tail), "climb": climb, "scatter": scatter, "plateau": plateau,
            "epochs": last["epoch"]}


def line_fit(values: list[float]) -> tuple[float, float]:
    """Least-squares line through equally spaced ``values``: its rise from the first to the
    last point, and the spread (max - min) of the residuals around it."""
    n = len(values)
    if n < 2:
        return 0.0, 0.0
    xm, ym = (n - 1) / 2, sum(values) / n
    slope = sum((i - xm) * (v - ym) for i, v in enumerate(values)) / sum((i - xm) ** 2 for i in range(n))
    residuals = [v - (ym + slope * (i - xm)) for i, v in enumerate(values)]
    return slope * (n - 1), max(residuals) - min(residuals)


def mean_std(values: list[float]) -> str:
    n = len(values)
    if n == 0:
        return "-"
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}" if n > 1 else f"{m:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", action="append", default=[], help="LABEL=GLOB of detforge run folders")
    parser.add_argument("--yolo", action="append", default=[], help="LABEL=JSONL:RUN_PREFIX")
    parser.add_argument("--plot", type=Path, default=None, help="draw the per-epoch curves (PNG)")
    parser.add_argument("--title", default="", help="the plot's title")
    args = parser.parse_args()
    arms: list[tuple[str, list[str], list[list[dict]]]] = []
    for spec in args.arm:
        label, pattern = spec.split("=", 1)
        runs = sorted(p for p in glob.glob(pattern) if (Path(p) / "metrics.csv").is_file())
        arms.append((label, [Path(r).name for r in runs], [detforge_curve(Path(r)) for r in runs]))
    for spec in args.yolo:
        label, rest = spec.split("=", 1)
        path, prefix = rest.rsplit(":", 1)
        curves = yolo_curves(Path(path), prefix)
        arms.append((label, [f"{prefix} x{len(curves)}"], curves))

    print("| arm | seeds | epochs | last mAP50-95 | last mAP50 | best - last (50-95) | swing, last 5 (50-95) "
          "| climb / scatter, last 5 | plateau exit epoch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, names, curves in arms:
        stats = [run_stats(c) for c in curves if c]
        if not stats:
            print(f"| {label} | 0 | - | - | - | - | - | - | - |")
            continue
        epochs = sorted({s["epochs"] for s in stats})
        plateaus = ", ".join(str(s["plateau"]) for s in stats)
        print(f"| {label} | {len(stats)} | {'/'.join(map(str, epochs))} | {mean_std([s['map50_95'] for s in stats])} "
              f"| {mean_std([s['map50'] for s in stats])} | {mean_std([s['best_gap'] for s in stats])} "
              f"| {mean_std([s['swing'] for s in stats])} "
              f"| {mean_std([s['climb'] for s in stats])} / {mean_std([s['scatter'] for s in stats])} | {plateaus} |")
    print("\nPer-epoch mAP50 (mean over seeds):\n")
    for label, names, curves in arms:
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        row = [sum(c[i]["map50"] for c in curves) / len(curves) for i in range(n)]
        print(f"- {label}: " + " ".join(f"{i + 1}:{v:.3f}" for i, v in enumerate(row)))
    if args.plot:
        plot_curves(arms, args.plot, args.title)


def plot_curves(arms: list[tuple[str, list[str], list[list[dict]]]], out: Path, title: str) -> None:
    """mAP50-95 and mAP50 per epoch: each arm's mean over seeds as a line, its seeds' range shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for ax, key, name in zip(fig.subplots(1, 2), ("map50_95", "map50"), ("mAP50-95", "mAP50")):
        for label, _, curves in arms:
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            epochs = [curves[0][i]["epoch"] for i in range(n)]
            values = [[c[i][key] for c in curves] for i in range(n)]
            line, = ax.plot(epochs, [sum(v) / len(v) for v in values], label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
            if len(curves) > 1:
                ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"val {name}")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
