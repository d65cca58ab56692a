"""`detforge compare data=PATH[,PATH...] models=a,b,... [runs=DIR,...] epochs=.. imgsz=..
[runtime=onnxruntime|openvino|torch] [batch=1] [threads=N] [max_latency_ms=..]`

Trains every model on every dataset with its own recipe (one ordinary run folder each, resumed
when interrupted, skipped when finished), scores all of them with one evaluator on one split,
times their exports in one interleaved session, and writes the table, the Pareto front and a
recommendation (detforge/compare/plan.py describes the folder)."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from detforge.compare import measure, ranking, report
from detforge.compare.plan import CompareSettings, epochs_logged, run_state
from detforge.compare.training import train_one
from detforge.config import ConfigError

LOG = logging.getLogger("detforge")


def _require_runtime(runtime: str) -> None:
    """Fail before hours of training when the latency runtime is missing."""
    if runtime == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("runtime=onnxruntime needs onnxruntime (pip install onnxruntime), "
                              "or use runtime=torch") from None
    elif runtime == "openvino":
        from detforge.export.openvino import require_openvino

        require_openvino()


def _train_seconds(run_dir: Path) -> float:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0.0
    with open(path, newline="") as f:
        return sum(float(r.get("time") or 0) for r in csv.DictReader(f))


def _checkpoint_imgsz(weights: Path) -> int:
    from detforge.api import Detector

    return int(Detector(str(weights))._settings().get("imgsz", 640))


def _candidates(s: CompareSettings, tag: str, failed: set[tuple[str, str]]) -> list[measure.Candidate]:
    out = [measure.Candidate(m, s.out / tag / m / "weights" / "best.pt", s.out / tag / m, s.imgsz)
           for m in s.models if (tag, m) not in failed]
    taken = {c.label for c in out}
    for run in s.runs:
        label, n = run.name, 2
        while label in taken:
            label, n = f"{run.name}-{n}", n + 1
        taken.add(label)
        imgsz = s.imgsz if s.imgsz_given else _checkpoint_imgsz(run / "weights" / "best.pt")
        out.append(measure.Candidate(label, run / "weights" / "best.pt", run, imgsz))
    return out


def train_all(s: CompareSettings) -> set[tuple[str, str]]:
    """Train (or resume, or skip) every model on every dataset; (dataset tag, model) of those that failed."""
    plans = [(tag, data, m, run_state(s.out / tag / m, m, data, s.imgsz, s.epochs))
             for tag, data in zip(s.tags, s.datasets) for m in s.models]
    done = sum(s.epochs if st.action == "done" else min(st.epochs_done, s.epochs) for *_, st in plans)
    failed: set[tuple[str, str]] = set()
    if not plans:
        return failed
    bar = tqdm(total=len(plans) * s.epochs, initial=done, unit="epoch", desc="compare", dynamic_ncols=True)
    try:
        for tag, data, model, state in plans:
            label = f"{tag}/{model}" if len(s.tags) > 1 else model
            if state.action == "done":
                LOG.info("compare: %s finished earlier (%d epochs, %s): not trained again", label, state.epochs_done,
                         state.folder)
                continue
            try:
                train_one(model, data, state, s.epochs, s.imgsz, s.train_args, bar, label)
            except (KeyboardInterrupt, ConfigError):
                raise
            except Exception as e:  # one model failing must not cost the others their places
                LOG.exception("compare: training %s failed (%s: %s); it is left out of the ranking",
                              label, type(e).__name__, e)
                failed.add((tag, model))
            bar.update(max(0, s.epochs - epochs_logged(state.folder)))  # early stop or failure: its epochs are over
    finally:
        bar.close()
    return failed


def measure_dataset(s: CompareSettings, tag: str, data: str | None, failed: set[tuple[str, str]]) -> dict[str, Any]:
    split = measure.evaluation_split(data, s.split)
    candidates = _candidates(s, tag, failed)
    rows, problems = [], []
    for c in candidates:
        LOG.info("compare: scoring %s on %s/%s", c.label, tag, split)
        row = {"dataset": tag, "model": c.label, "split": split, "imgsz": c.imgsz, "runtime": s.runtime,
               "batch": s.latency_batch, "run_dir": str(c.run_dir), "epochs": epochs_logged(c.run_dir),
               "train_s": round(_train_seconds(c.run_dir), 1)}
        row.update(measure.evaluate(c, data, split, s.out / tag / "val", s.device, s.train_args.get("batch"),
                                    s.train_args.get("workers")))
        rows.append(row)
    files = {}
    for c, row in zip(candidates, rows):
        try:
            files[c.label] = measure.export_for(c, s.runtime, s.latency_batch, s.out / tag / "exports")
            row["model_file"] = str(files[c.label])
        except Exception as e:  # a model that cannot be exported is reported, the others are still timed
            LOG.exception("compare: exporting %s for %s failed", c.label, s.runtime)
            problems.append(f"{c.label}: export for {s.runtime} failed ({type(e).__name__}: {e})")
    LOG.info("compare: timing %d models with %s, batch %d, %s threads, %d calls each (interleaved)",
             len(files), s.runtime, s.latency_batch, s.threads or "default", s.latency_iters)
    latency = measure.latency_session(files, s.runtime, s.latency_batch, s.threads, s.device, s.latency_iters)
    timed = []
    for row in rows:
        if row["model"] in latency:
            row.update({k: latency[row["model"]][k] for k in ("p50_ms", "p90_ms", "avg_ms", "throughput")})
            timed.append(row)
    front = ranking.pareto_front([(r["p50_ms"], r["map50_95"]) for r in timed])
    for r, on in zip(timed, front):
        r["pareto"] = on
    rec = ranking.recommend(timed, s.max_latency_ms) if timed else None
    text = ranking.recommendation_text(timed, rec, tag if len(s.tags) > 1 else "") if rec else []
    return {"data": data, "split": split, "rows": timed, "recommendation": rec, "text": text, "problems": problems}


def run_compare(s: CompareSettings) -> dict[str, Any]:
    _require_runtime(s.runtime)
    s.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    failed = train_all(s)
    per_dataset = {tag: measure_dataset(s, tag, data, failed) for tag, data in zip(s.tags, s.datasets)}
    ranks = (ranking.mean_ranks({t: d["rows"] for t, d in per_dataset.items() if d["rows"]})
             if len(per_dataset) > 1 else {})
    settings = {"datasets": s.datasets, "models": s.models, "runs": [str(r) for r in s.runs], "epochs": s.epochs,
                "imgsz": s.imgsz, "runtime": s.runtime, "latency_batch": s.latency_batch, "threads": s.threads,
                "latency_iters": s.latency_iters, "max_latency_ms": s.max_latency_ms, "device": s.device,
                "train_args": s.train_args, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    rows = [r for d in per_dataset.values() for r in d["rows"]]
    report.write_csv(rows, s.out / "compare.csv")
    payload = {"settings": settings, "machine": report.machine(), "datasets": per_dataset, "mean_rank": ranks,
               "failed": sorted(f"{t}/{m}" for t, m in failed), "seconds": round(time.time() - t0, 1)}
    report.write_json(payload, s.out / "compare.json")
    trained = {int(r["epochs"]) for r in rows if r.get("epochs")} or {s.epochs}  # runs= keep their own count
    epochs = f"{trained.pop()} epochs" if len(trained) == 1 else "epochs per model in compare.csv"
    title = (f"detforge compare | {s.runtime}, batch {s.latency_batch}, threads {s.threads or 'default'} | "
             f"imgsz {s.imgsz} | {epochs}")
    if rows:
        report.plot({t: d["rows"] for t, d in per_dataset.items() if d["rows"]}, s.out / "compare.png", title)
    return payload


def print_summary(payload: dict[str, Any], out: Path) -> None:
    datasets = payload["datasets"]
    for tag, d in datasets.items():
        print(f"\n{tag} (split {d['split']}, {payload['settings']['runtime']} p50 latency):")
        if d["rows"]:
            print(report.table_text(d["rows"]))
        for line in d["text"]:
            print(line)
        for line in d["problems"]:
            print(f"problem: {line}")
    if payload["mean_rank"]:
        print("\nmean rank over datasets (1 = most accurate):")
        print(report.ranks_text(payload["mean_rank"], list(datasets)))
    for name in payload["failed"]:
        print(f"failed: {name} (see its train.log); left out of the ranking")
    print(f"\nresults: {out / 'compare.csv'}, {out / 'compare.json'}, {out / 'compare.png'}")


def compare_command(cfg: Any, given: set[str]) -> int:
    settings = CompareSettings.from_config(cfg, given)
    payload = run_compare(settings)
    print_summary(payload, settings.out)
    incomplete = payload["failed"] or any(d["problems"] for d in payload["datasets"].values())
    return 1 if incomplete else 0
