"""CPU latency of every detector family in one session: ONNX Runtime and OpenVINO, batch 1, one
image size (640 by default), the same machine minutes for every model.

    python benchmarks/family_latency.py --threads 2 --imgsz 640 \\
        --models fcos-n=runs/compare/bccd/fcos-n/weights/best.pt,dfine-n=...,mask-rcnn-r50

Each entry is ``label=best.pt`` (a trained checkpoint, so NMS-based models see the number of
candidate boxes a trained model gives) or a zoo name (fresh weights with --classes classes;
``label=name`` also works). Every model is exported once per runtime at --imgsz with its
post-processing inside the graph (``Detector.export``), then each runtime's session loads all
models, warms them up and times them in rotating rounds (``detforge.compare.measure.
time_rotating``, the code `detforge compare` uses), so a slow phase of the machine
falls on every model alike. Model-only latency: a fixed random uint8 image of the export's size
(as 0..1 floats), from the runtime call to the final boxes.

Another framework's ONNX export joins the same rounds with ``--onnx label=model.onnx`` or
``label=model.onnx:params_m`` (repeatable; params left blank when not given): onnxruntime runs
the file and OpenVINO reads the same .onnx, with the session settings detforge's backends use
(--threads, OpenVINO in f32), fed [1, 3, imgsz, imgsz] float32 RGB 0..1 from the same kind of
random image; its outputs are taken as they come. ``--yolo11n FILE`` first has Ultralytics export
YOLO11n from scratch (``yolo11n.yaml`` with --classes classes, nothing downloaded) in the peers
venv (benchmarks/peers_env.py, ``--peers``) to FILE: ONNX at --imgsz, batch 1, its NMS inside the
graph (``nms=True``), then times it as ``yolo11n``:

    python benchmarks/family_latency.py --models fcos-n --yolo11n /tmp/yolo11n_640_nms.onnx \\
        --peers /work/venvs/peers

Prints one markdown table (params, ONNX Runtime p50/p90, OpenVINO p50/p90, images/s) and writes
the rows as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from detforge.api import Detector  # noqa: E402
from detforge.compare.measure import EXPORT_FORMAT, EXPORT_SUFFIX, backend_calls, time_rotating  # noqa: E402
from detforge.infer.backends import onnxruntime_session_options, openvino_config  # noqa: E402
from detforge.infer.preprocess import to_input  # noqa: E402

# Ultralytics' own exporter, run in the peers venv. conf 0.001 is the score floor of detforge's
# graphs (and Ultralytics' val), so its NMS sees candidates as theirs do; the peers venv has no
# onnxslim, hence simplify=False (onnxruntime and OpenVINO fold the graph themselves).
YOLO11N_EXPORT = """
import shutil, sys
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
out, imgsz, classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
yolo = YOLO("yolo11n.yaml")
args = yolo.model.args
yolo.model = DetectionModel("yolo11n.yaml", nc=classes, verbose=False)
yolo.model.args, yolo.model.task = args, "detect"
params = sum(p.numel() for p in yolo.model.parameters())
shutil.move(yolo.export(format="onnx", imgsz=imgsz, batch=1, nms=True, conf=0.001, iou=0.7, max_det=300,
                        simplify=False), out)
print("PARAMS", params)
"""


def parse_models(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        label, _, source = item.partition("=")
        out.append((label, source or label))
    return out


def parse_onnx(item: str) -> tuple[str, Path, float | None]:
    """``label=model.onnx`` or ``label=model.onnx:params_m``."""
    label, _, rest = item.partition("=")
    path, _, params = rest.partition(":")
    if not label or not Path(path).is_file():
        raise SystemExit(f"--onnx {item}: expected label=model.onnx[:params_m] naming an existing file")
    if params and not params.replace(".", "", 1).isdigit():
        raise SystemExit(f"--onnx {item}: params_m '{params}' is not a number")
    return label, Path(path), float(params) if params else None


def export_yolo11n(out: Path, imgsz: int, classes: int, peers: Path) -> float:
    """Ultralytics YOLO11n, fresh weights, exported to ``out``; returns its parameters (M)."""
    from peers_env import ensure_peers

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # Ultralytics writes the export into the working folder
        run = subprocess.run([str(ensure_peers(peers)), "-c", YOLO11N_EXPORT, str(out), str(imgsz), str(classes)],
                             cwd=tmp, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"YOLO11n export failed:\n{run.stderr[-3000:]}")
    return next(int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("PARAMS ")) / 1e6


def onnx_call(path: Path, runtime: str, threads: int):
    """One call of an external .onnx, with the session settings of detforge's backends."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), onnxruntime_session_options(threads),
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    from detforge.export.openvino import require_openvino

    core = require_openvino().Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", openvino_config(threads, False))
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def time_session(files: dict[str, Path], external: dict[str, Path], runtime: str, threads: int, iters: int,
                 imgsz: int) -> dict[str, dict]:
    """compare's timing (warm-up, then rounds in a rotating order, batch 1) of detforge's exports
    with the external .onnx files in the same rounds."""
    calls = backend_calls(files, runtime, 1, threads, "cpu")
    rng = np.random.default_rng(1)
    for label, path in external.items():
        run = onnx_call(path, runtime, threads)
        x = to_input([rng.integers(0, 256, (imgsz, imgsz, 3), np.uint8)])
        calls[label] = lambda run=run, x=x: run(x)
    return time_rotating(calls, iters, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--classes", type=int, default=3, help="classes of the fresh models named by zoo name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--onnx", action="append", default=[], help="label=model.onnx[:params_m], repeatable")
    parser.add_argument("--yolo11n", type=Path, help="export Ultralytics YOLO11n (fresh) here and time it")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"), help="peers venv (benchmarks/peers_env.py)")
    parser.add_argument("--work", default="runs/bench/family_latency")
    parser.add_argument("--out", default="runs/bench/family_latency/latency.json")
    args = parser.parse_args()
    onnx_files = [parse_onnx(item) for item in args.onnx]  # a bad one fails before the exports

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    rows: dict[str, dict] = {}
    files: dict[str, dict[str, Path]] = {r: {} for r in runtimes}
    for label, source in parse_models(args.models):
        trained = source.endswith(".pt")
        det = Detector(source) if trained else Detector(source, num_classes=args.classes)
        rows[label] = {"model": label, "weights": source if trained else f"fresh ({args.classes} classes)",
                       "params_m": sum(p.numel() for p in det.model.parameters()) / 1e6}
        for runtime in runtimes:
            fmt = EXPORT_FORMAT[runtime]
            start = time.perf_counter()
            path = det.export(format=fmt, out=work / f"{label}_{args.imgsz}{EXPORT_SUFFIX[fmt]}", imgsz=args.imgsz, batch=1)
            print(f"{label}: {fmt} export {time.perf_counter() - start:.1f} s -> {path}", flush=True)
            files[runtime][label] = Path(path)
    external: dict[str, Path] = {}
    if args.yolo11n:
        start = time.perf_counter()
        params = export_yolo11n(args.yolo11n, args.imgsz, args.classes, args.peers)
        print(f"yolo11n: Ultralytics onnx export {time.perf_counter() - start:.1f} s -> {args.yolo11n}", flush=True)
        external["yolo11n"] = args.yolo11n
        rows["yolo11n"] = {"model": "yolo11n", "weights": f"fresh ({args.classes} classes), Ultralytics export",
                           "params_m": params}
    for label, path, params in onnx_files:
        if label in rows:
            raise SystemExit(f"--onnx {label}={path}: label '{label}' already names another model")
        external[label] = path
        rows[label] = {"model": label, "weights": str(path), "params_m": params}
    for runtime in runtimes:
        print(f"timing {len(files[runtime]) + len(external)} models on {runtime}, {args.threads} threads, "
              f"{args.iters} calls each", flush=True)
        for label, summary in time_session(files[runtime], external, runtime, args.threads, args.iters,
                                           args.imgsz).items():
            rows[label][runtime] = summary

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(list(rows.values()), indent=2))
    head = "| model | weights | params (M) |"
    rule = "|---|---|---:|"
    for runtime in runtimes:
        head += f" {runtime} p50 (ms) | {runtime} p90 (ms) | {runtime} img/s |"
        rule += "---:|---:|---:|"
    print("\n" + head + "\n" + rule)
    for r in rows.values():
        params = "" if r["params_m"] is None else f"{r['params_m']:.2f}"
        line = f"| {r['model']} | {r['weights']} | {params} |"
        for runtime in runtimes:
            s = r[runtime]
            line += f" {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['throughput']:.1f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
