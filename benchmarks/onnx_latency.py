"""ONNX Runtime CPU latency at 640, batch 1: detforge D-FINE-N/S against Ultralytics YOLO11n/s
and the official D-FINE export of the same sizes, measured side by side in one run.

All models get random weights (nothing is downloaded); by default D-FINE's norms and
affine blocks are then set to trained-looking values (benchmarks/trained_like.py) for
detforge and the official model alike, since at their initial identities onnxruntime drops
ops that a trained model keeps (``--weights init`` measures the fresh models). 80 classes,
a static 1x3x640x640 input, the same session options (``--threads`` intra-op, 1 inter-op,
all graph optimisations). Timing rounds interleave the models so machine load
drifts hit them all alike; the table reports the median over all timed runs.
Peers come from a separate environment (benchmarks/peers_env.py), never from detforge's.

    python benchmarks/onnx_latency.py --official /path/to/D-FINE [--threads 2 --rounds 5 --iters 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers_env import ensure_peers  # noqa: E402
from trained_like import make_trained_like  # noqa: E402

YOLO_EXPORT = """
import sys
from ultralytics import YOLO
print(YOLO(sys.argv[1]).export(format="onnx", imgsz=int(sys.argv[2]), opset=17, simplify=False, dynamic=False, batch=1))
"""


def export_detforge(name: str, out: Path, imgsz: int, trained_like: bool = True) -> Path:
    from detforge.export import export_model
    from detforge.models.zoo import build_model

    model = build_model(name, 80).eval()
    if trained_like:
        make_trained_like(model)
    tag = "trained_like" if trained_like else "init"
    return export_model(model, [str(i) for i in range(80)], "onnx", out / f"detforge_{name}_{tag}", imgsz=imgsz)


def export_yolo(peers_python: Path, weights: str, out: Path, imgsz: int) -> Path:
    """Ultralytics' own ONNX export of ``weights`` (a model yaml: fresh weights, or a .pt in
    ``out``); the file lands in ``out`` under the same stem."""
    subprocess.run([str(peers_python), "-c", YOLO_EXPORT, weights, str(imgsz)], cwd=out, check=True,
                   stdout=subprocess.DEVNULL)
    return out / f"{Path(weights).stem}.onnx"


def export_official(peers_python: Path, source: Path, size: str, out: Path, imgsz: int, trained_like: bool = True) -> Path:
    target = out / f"official_dfine_{size}_{'trained_like' if trained_like else 'init'}.onnx"
    subprocess.run([str(peers_python), str(HERE / "official_dfine_export.py"), "--source", str(source), "--size", size,
                    "--out", str(target), "--imgsz", str(imgsz)] + (["--trained-like"] if trained_like else []),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return target


def session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def feeds(sess, imgsz: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for inp in sess.get_inputs():
        if inp.name == "orig_target_sizes":  # the official D-FINE export's second input
            out[inp.name] = np.array([[imgsz, imgsz]], np.int64)
        else:
            out[inp.name] = rng.random((1, 3, imgsz, imgsz), dtype=np.float32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", type=Path, help="official D-FINE checkout (skipped when absent)")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/detforge-onnx-latency"))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--weights", choices=["trained-like", "init"], default="trained-like",
                        help="D-FINE norms and affine blocks as training leaves them (default), or at their "
                             "initial identities, which onnxruntime optimises away")
    parser.add_argument("--sizes", default="n,s")
    args = parser.parse_args()
    trained_like = args.weights == "trained-like"
    args.work.mkdir(parents=True, exist_ok=True)
    peers = ensure_peers(args.peers)
    models: dict[str, Path] = {}
    for size in args.sizes.split(","):
        models[f"detforge D-FINE-{size.upper()}"] = export_detforge(f"dfine-{size}", args.work, args.imgsz, trained_like)
        if args.official and args.official.is_dir():
            models[f"official D-FINE-{size.upper()}"] = export_official(peers, args.official, size, args.work, args.imgsz,
                                                                        trained_like)
        models[f"Ultralytics YOLO11{size}"] = export_yolo(peers, f"yolo11{size}.yaml", args.work, args.imgsz)
    sessions = {name: session(path, args.threads) for name, path in models.items()}
    inputs = {name: feeds(s, args.imgsz) for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, sess in sessions.items():
            for i in range(args.warmup + args.iters):
                start = time.perf_counter()
                sess.run(None, inputs[name])
                if i >= args.warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    rows = []
    for name, t in times.items():
        arr = np.array(t)
        rows.append({"model": name, "p50_ms": float(np.median(arr)), "p90_ms": float(np.percentile(arr, 90)),
                     "mean_ms": float(arr.mean()), "runs": len(arr), "onnx_mb": models[name].stat().st_size / 2**20})
    print("| Model | p50 (ms) | p90 (ms) | mean (ms) | timed runs | ONNX size (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['mean_ms']:.1f} | {r['runs']} | {r['onnx_mb']:.1f} |")
    import onnxruntime

    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "load_before": load, "load_after": os.getloadavg()[0],
                      "onnxruntime": onnxruntime.__version__, "threads": args.threads, "weights": args.weights,
                      "rows": rows}))


if __name__ == "__main__":
    main()
