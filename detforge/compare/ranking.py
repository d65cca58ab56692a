"""Pure functions that turn measured (accuracy, latency) pairs into a choice.

- ``pareto_front``: a model is on the front when no other model is at least as accurate and at
  least as fast and strictly better in one of the two. Equal points are all on the front.
- ``recommend``: the fastest model whose mAP50-95 is within ``tolerance`` (0.01 = one point)
  of the best, and the most accurate model whose p50 latency fits ``max_latency_ms``.
- ``mean_ranks``: over several datasets, each model's rank by mAP50-95 (1 = best; ties share
  the mean of their places, as in scipy's ``rankdata``), averaged over the datasets it ran on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scipy.stats import rankdata

ACCURACY = "map50_95"
LATENCY = "p50_ms"
WITHIN_BEST = 0.01  # one mAP50-95 point: differences below it rarely survive another seed


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """``points``: (latency, accuracy) per model -> on the front (lower latency and higher
    accuracy are better)."""
    out = []
    for i, (lat_i, acc_i) in enumerate(points):
        dominated = any(
            lat_j <= lat_i and acc_j >= acc_i and (lat_j < lat_i or acc_j > acc_i)
            for j, (lat_j, acc_j) in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


def recommend(rows: Sequence[Mapping[str, Any]], max_latency_ms: float | None = None,
              tolerance: float = WITHIN_BEST) -> dict[str, Any]:
    """``rows``: dicts with ``model``, ``map50_95``, ``p50_ms``. Returns the best model, the fastest
    within ``tolerance`` of it, and (with a budget) the most accurate within the budget, or None
    when no model fits it; ties go to the faster, then the more accurate model."""
    if not rows:
        raise ValueError("recommend: no models to choose from")
    best = max(rows, key=lambda r: (r[ACCURACY], -r[LATENCY]))
    near = [r for r in rows if r[ACCURACY] >= best[ACCURACY] - tolerance - 1e-12]
    fastest_near = min(near, key=lambda r: (r[LATENCY], -r[ACCURACY]))
    out: dict[str, Any] = {"best": best["model"], "fastest_within_tolerance": fastest_near["model"],
                           "tolerance": tolerance, "max_latency_ms": max_latency_ms, "within_budget": None}
    if max_latency_ms is not None:
        fits = [r for r in rows if r[LATENCY] <= max_latency_ms]
        if fits:
            out["within_budget"] = max(fits, key=lambda r: (r[ACCURACY], -r[LATENCY]))["model"]
    return out


def recommendation_text(rows: Sequence[Mapping[str, Any]], rec: Mapping[str, Any], label: str = "") -> list[str]:
    """The recommendation in words, one sentence a line."""
    by = {r["model"]: r for r in rows}
    best, fast = by[rec["best"]], by[rec["fastest_within_tolerance"]]
    where = f" on {label}" if label else ""
    lines = [f"Most accurate{where}: {best['model']} (mAP50-95 {best[ACCURACY]:.3f}, p50 {best[LATENCY]:.1f} ms)."]
    points = rec["tolerance"] * 100
    if fast["model"] == best["model"]:
        lines.append(f"No model within {points:g} mAP50-95 point of it is faster: use {best['model']}.")
    else:
        lines.append(
            f"Fastest within {points:g} mAP50-95 point of the best: {fast['model']} (mAP50-95 {fast[ACCURACY]:.3f}, "
            f"p50 {fast[LATENCY]:.1f} ms, {best[LATENCY] / max(fast[LATENCY], 1e-9):.1f}x faster than {best['model']})."
        )
    budget = rec.get("max_latency_ms")
    if budget is not None:
        pick = rec.get("within_budget")
        if pick is None:
            quickest = min(rows, key=lambda r: r[LATENCY])
            lines.append(f"No model meets p50 <= {budget:g} ms; the fastest is {quickest['model']} "
                         f"at {quickest[LATENCY]:.1f} ms.")
        else:
            r = by[pick]
            lines.append(f"Most accurate under {budget:g} ms: {pick} (mAP50-95 {r[ACCURACY]:.3f}, p50 {r[LATENCY]:.1f} ms).")
    return lines


def mean_ranks(tables: Mapping[str, Sequence[Mapping[str, Any]]], key: str = ACCURACY,
               higher_is_better: bool = True) -> dict[str, dict[str, Any]]:
    """``tables``: dataset -> rows -> {model: {"mean_rank", "ranks": {dataset: rank}}}, sorted
    by mean rank."""
    ranks: dict[str, dict[str, float]] = {}
    for dataset, rows in tables.items():
        values = [(-1 if higher_is_better else 1) * float(r[key]) for r in rows]
        for r, rank in zip(rows, rankdata(values, method="average")):
            ranks.setdefault(r["model"], {})[dataset] = float(rank)
    out = {m: {"mean_rank": sum(d.values()) / len(d), "ranks": d} for m, d in ranks.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1]["mean_rank"]))
