"""The two measurements of a comparison, the same for every model:

- accuracy: ``Detector(best.pt).val`` (the `detforge val` machinery: one evaluator, original-
  image pixels) on one split of the dataset, at one image size;
- latency: each model exported once (ONNX for onnxruntime, OpenVINO IR for openvino; the .pt
  itself for torch) and timed in ONE session: all models loaded, warmed up, then timed in
  rounds, each round calling every model ``iters / rounds`` times in a rotating order, so a
  slow phase of the machine (another process, heat) falls on every model alike. Model-only
  latency (a fixed random input of the export's size), as `detforge bench latency`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from detforge.bench.latency import summarise, time_calls

LOG = logging.getLogger("detforge")
WARMUP_CALLS = 5  # first calls pay for allocations and kernel selection
MAX_ROUNDS = 5
EXPORT_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino"}
EXPORT_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


@dataclass
class Candidate:
    """One model of a comparison: its label, its best.pt, and where its evaluation goes."""

    label: str
    weights: Path
    run_dir: Path
    imgsz: int


def evaluation_split(data: str | None, asked: str | None) -> str:
    """``split=`` when given; else the test split when the dataset has both val and test (val
    chose each run's best.pt, so test is the unseen one), else val, else test."""
    if asked:
        return asked
    from detforge.data.formats import load_dataset

    splits = {k for k, v in load_dataset(data).splits.items() if v}
    if "test" in splits and "val" in splits:
        return "test"
    return "val" if "val" in splits else "test"


def evaluate(c: Candidate, data: str | None, split: str, out: Path, device: str, batch: int | None,
             workers: int | None) -> dict[str, Any]:
    from detforge.api import Detector

    args: dict[str, Any] = {"split": split, "imgsz": c.imgsz, "save_dir": str(out / c.label), "plots": False,
                            "device": device}
    if data is not None:
        args["data"] = data
    if batch:
        args["batch"] = batch
    if workers is not None:
        args["workers"] = workers
    det = Detector(str(c.weights))
    metrics = det.val(**args)
    params = sum(p.numel() for p in det.model.parameters())
    return {"params_m": params / 1e6, **{k: float(metrics[k]) for k in
                                        ("map50_95", "map50", "map75", "precision", "recall", "f1", "iou")}}


def export_for(c: Candidate, runtime: str, batch: int, folder: Path) -> Path:
    """The file the runtime loads: the .pt for torch, else an export (made once per image size
    and batch, and again when best.pt is newer than it)."""
    if runtime == "torch":
        return c.weights
    fmt = EXPORT_FORMAT[runtime]
    path = folder / f"{c.label}_{c.imgsz}_b{batch}{EXPORT_SUFFIX[fmt]}"
    if path.is_file() and path.stat().st_mtime >= c.weights.stat().st_mtime:
        return path
    from detforge.api import Detector

    folder.mkdir(parents=True, exist_ok=True)
    return Path(Detector(str(c.weights)).export(format=fmt, out=path, imgsz=c.imgsz, batch=batch))


def latency_device(runtime: str, device: str) -> str:
    """Where the runtime runs: torch on the training device; onnxruntime / OpenVINO on the CPU
    when asked, else ``auto`` (onnxruntime's CUDA provider where its build has one, OpenVINO's
    CPU), since a CUDA index such as ``0`` means nothing to them."""
    if runtime == "torch" or str(device).lower() in ("cpu", "auto", ""):
        return device
    return "auto"


def latency_session(files: dict[str, Path], runtime: str, batch: int, threads: int | None, device: str,
                    iters: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """label -> latency summary (p50_ms, p90_ms, avg_ms, throughput, ...), measured interleaved."""
    return time_rotating(backend_calls(files, runtime, batch, threads, device, seed), iters, batch)


def backend_calls(files: dict[str, Path], runtime: str, batch: int, threads: int | None, device: str,
                  seed: int = 0) -> dict[str, Callable[[], Any]]:
    """label -> one call of that export's runtime session on a fixed random batch of its size."""
    from detforge.infer.backends import load_backend
    from detforge.infer.preprocess import to_input

    calls = {}
    rng = np.random.default_rng(seed)
    for label, path in files.items():
        b = load_backend(path, runtime, latency_device(runtime, device), threads)
        h, w = b.meta.imgsz
        x = to_input([rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(batch)], b.input_dtype)
        calls[label] = lambda b=b, x=x: b(x)
    return calls


def time_rotating(calls: dict[str, Callable[[], Any]], iters: int, batch: int) -> dict[str, dict[str, Any]]:
    """label -> latency summary of ``iters`` calls each: all warmed up first, then timed in rounds
    whose order rotates, so no model always runs right after the same one (caches, clocks)."""
    for call in calls.values():
        time_calls(call, WARMUP_CALLS, 0)
    rounds = max(1, min(MAX_ROUNDS, iters))
    per_round = [iters // rounds + (1 if r < iters % rounds else 0) for r in range(rounds)]
    times: dict[str, list[np.ndarray]] = {label: [] for label in calls}
    labels = list(calls)
    for r, n in enumerate(per_round):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:  # a different model goes first each round
            times[label].append(time_calls(calls[label], 0, n))
    return {label: summarise(np.concatenate(t), batch) for label, t in times.items()}
