"""CPU latency of every detector family in one session: ONNX Runtime and OpenVINO, batch 1, one
image size (640 by default), the same machine minutes for every model.

    python benchmarks/family_latency.py --threads 2 --imgsz 640 \\
        --models fcos-n=runs/compare/bccd/fcos-n/weights/best.pt,dfine-n=...,mask-rcnn-r50

Each entry is ``label=best.pt`` (a trained checkpoint, so NMS-based models see the number of
candidate boxes a trained model gives) or a zoo name (fresh weights with --classes classes;
``label=name`` also works). Every model is exported once per runtime at --imgsz with its
post-processing inside the graph (``Detector.export``), then each runtime's session loads all
models, warms them up and times them in rotating rounds (``detforge.compare.measure.
latency_session``, the code `detforge compare` uses), so a slow phase of the machine falls on
every model alike. Model-only latency: a fixed random uint8 input of the export's size, from
the runtime call to the final boxes.

Prints one markdown table (params, ONNX Runtime p50/p90, OpenVINO p50/p90, images/s) and writes
the rows as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detforge.api import Detector  # noqa: E402
from detforge.compare.measure import EXPORT_FORMAT, EXPORT_SUFFIX, latency_session  # noqa: E402


def parse_models(text: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        label, _, source = item.partition("=")
        out.append((label, source or label))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--classes", type=int, default=3, help="classes of the fresh models named by zoo name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--work", default="runs/bench/family_latency")
    parser.add_argument("--out", default="runs/bench/family_latency/latency.json")
    args = parser.parse_args()

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
    for runtime in runtimes:
        print(f"timing {len(files[runtime])} models on {runtime}, {args.threads} threads, {args.iters} calls each",
              flush=True)
        for label, summary in latency_session(files[runtime], runtime, 1, args.threads, "cpu", args.iters).items():
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
        line = f"| {r['model']} | {r['weights']} | {r['params_m']:.2f} |"
        for runtime in runtimes:
            s = r[runtime]
            line += f" {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['throughput']:.1f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
