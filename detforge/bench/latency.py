"""`detforge bench latency`: warm-up, then per batch size the mean / p50 / p90 / p95 / p99
latency in ms and the throughput in images/s (the layout of NVIDIA's DeepLearningExamples
inference tables, plus p50). ``include_io=true`` times what a deployment pays per batch:
cv2 decode + resize + the model + mapping boxes back, on real image files."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detforge.bench.args import int_list, resolve
from detforge.bench.report import write_report

LOG = logging.getLogger("detforge")

DEFAULTS = {
    "model": "", "backend": "", "batch": "1,2,4,8", "imgsz": 640, "threads": 0, "device": "cpu",
    "include_io": False, "source": "", "warmup": 10, "iters": 50, "num_classes": 80, "dynamic": False,
    "half": False, "decoder_layers": None, "out": "runs/bench/latency",
}
COLUMNS = [
    ("batch", "Batch size", ""), ("throughput", "Throughput (img/s)", ".1f"), ("avg_ms", "Latency avg (ms)", ".2f"),
    ("p50_ms", "Latency 50% (ms)", ".2f"), ("p90_ms", "Latency 90% (ms)", ".2f"), ("p95_ms", "Latency 95% (ms)", ".2f"),
    ("p99_ms", "Latency 99% (ms)", ".2f"),
]


def time_calls(fn: Callable[[], object], warmup: int, iters: int) -> np.ndarray:
    """Milliseconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(iters)
    for i in range(iters):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1000
    return times


def summarise(times_ms: np.ndarray, batch: int) -> dict:
    p50, p90, p95, p99 = np.percentile(times_ms, [50, 90, 95, 99])
    avg = float(times_ms.mean())
    return {"batch": batch, "throughput": 1000 * batch / avg, "avg_ms": avg, "p50_ms": float(p50),
            "p90_ms": float(p90), "p95_ms": float(p95), "p99_ms": float(p99), "iters": int(len(times_ms))}


def build_backend(opts: dict, workdir: Path):
    """A backend for ``model``: a file (.pt/.onnx/.xml/.engine) or a zoo name (fresh weights,
    fine for timing). A .pt or zoo name with backend onnxruntime/openvino/tensorrt is exported
    first into ``workdir``."""
    import torch

    from detforge.export import export_model
    from detforge.export.metadata import ExportMetadata
    from detforge.infer.backends import SUFFIX_BACKEND, TorchBackend, load_backend, resolve_device

    source = str(opts["model"])
    if not source:
        raise ValueError("bench latency needs model=FILE or a model name (see `detforge models`)")
    path = Path(source)
    backend = opts["backend"] or SUFFIX_BACKEND.get(path.suffix.lower(), "torch")
    threads = int(opts["threads"]) or None
    layers = opts["decoder_layers"]
    if layers in ("", "None", "none"):
        layers = None
    if layers is not None:
        if not str(layers).isdigit() or int(layers) < 1:
            raise ValueError(f"bench latency: decoder_layers must be a whole number >= 1, got {layers!r}")
        layers = int(layers)
    if path.suffix.lower() in (".onnx", ".xml", ".engine") or (path.suffix == ".pt" and backend == "torch"):
        return load_backend(path, backend, opts["device"], threads, layers)
    from detforge.engine.checkpoint import load_detector_checkpoint, set_decoder_layers

    if path.suffix == ".pt":
        model, ckpt = load_detector_checkpoint(path, decoder_layers=layers)
        names = list(ckpt.get("names") or [str(i) for i in range(model.num_classes)])
    else:
        from detforge.models.zoo import build_model

        model = set_decoder_layers(build_model(source, int(opts["num_classes"])).eval(), layers)
        names = [str(i) for i in range(model.num_classes)]
    imgsz = int(opts["imgsz"])
    if backend == "torch":
        meta = ExportMetadata(names=names, imgsz=(imgsz, imgsz), model=source, stride=int(getattr(model, "stride", 32)),
                              dynamic=True)
        if threads:
            torch.set_num_threads(threads)
        return TorchBackend(model, meta, resolve_device(opts["device"]), half=bool(opts["half"]))
    fmt = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}.get(backend)
    if fmt is None:
        raise ValueError(f"unknown backend {backend!r}; allowed: torch, onnxruntime, openvino, tensorrt")
    exported = export_model(model, names, fmt, workdir / "model", imgsz=imgsz, dynamic=bool(opts["dynamic"]),
                            half=bool(opts["half"]) and fmt != "onnx")
    return load_backend(exported, backend, opts["device"], threads)


def fixed_size_check(backend, imgsz: int, asked: bool, model: str) -> int:
    """A model exported at a fixed size runs at that size: taken when imgsz was not given,
    refused with the two ways out when another one was."""
    meta = getattr(backend, "meta", None)
    if meta is None or meta.dynamic:
        return imgsz
    h, w = (int(v) for v in meta.imgsz)
    if (h, w) == (imgsz, imgsz):
        return imgsz
    if asked:
        raise ValueError(f"{model}: this model is fixed at {w}x{h}; pass imgsz={w} or export with dynamic=true")
    LOG.info("%s: fixed at %dx%d, timing at that size", model, w, h)
    return w


def run_latency(args: dict) -> list[dict]:
    from detforge.infer.predictor import Predictor
    from detforge.infer.preprocess import to_input

    opts = resolve("latency", args, DEFAULTS)
    batches = int_list(opts["batch"], "batch")
    imgsz = int(opts["imgsz"])
    with tempfile.TemporaryDirectory(prefix="detforge-bench-") as tmp:
        backend = build_backend(opts, Path(tmp))
        imgsz = fixed_size_check(backend, imgsz, "imgsz" in args, str(opts["model"]))
        rows = []
        if opts["include_io"]:
            from detforge.infer.sources import expand_paths

            if not opts["source"]:
                raise ValueError("include_io=true needs source=DIR|GLOB of images to read")
            files = expand_paths(opts["source"], images_only=True)
            predictor = Predictor(backend, conf=0.25, imgsz=imgsz, batch=max(batches))
        rng = np.random.default_rng(0)
        for batch in batches:
            if opts["include_io"]:
                chunk = [files[i % len(files)] for i in range(batch)]
                fn = lambda chunk=chunk: predictor.predict(chunk)  # noqa: E731
            else:
                x = to_input([rng.integers(0, 256, (imgsz, imgsz, 3), np.uint8) for _ in range(batch)], backend.input_dtype)
                if backend.fixed_batch and backend.fixed_batch != batch:
                    raise ValueError(f"{opts['model']}: built for batch {backend.fixed_batch} only, not {batch}")
                fn = lambda x=x: backend(x)  # noqa: E731
            row = summarise(time_calls(fn, int(opts["warmup"]), int(opts["iters"])), batch)
            rows.append(row)
            LOG.info("batch %d: p50 %.2f ms, %.1f img/s", batch, row["p50_ms"], row["throughput"])
    title = (f"latency: {opts['model']} | backend {backend.name} | {imgsz}x{imgsz} | threads {opts['threads'] or 'default'}"
             f" | device {opts['device']} | {'read + preprocess + model' if opts['include_io'] else 'model only'}"
             + (f" | decoder layers {opts['decoder_layers']}" if opts["decoder_layers"] not in (None, "") else ""))
    table = write_report(rows, COLUMNS, Path(opts["out"]), "latency", title)
    print(f"{title}\n{table}")
    return rows
