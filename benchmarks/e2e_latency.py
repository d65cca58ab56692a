"""Time to boxes: image file in, final detections out, for trained models on real images.

Model-only latency (benchmarks/onnx_latency.py) leaves out what a deployment pays around the
graph: reading and resizing the image and, for YOLO models, non-maximum suppression, which
their ONNX graph does not contain. Here each framework runs its own ONNX predictor the way its
documentation shows, on the same JPEGs, with onnxruntime on the CPU at the same thread count:

- detforge: ``Predictor(best.onnx, conf=0.25, threads=T).predict(path)`` (cv2 read, resize, the graph
  with its top-k inside, boxes mapped back to the original pixels, conf 0.25);
- Ultralytics: ``YOLO(best.onnx).predict(path, imgsz=S, conf=0.25)`` (its letterbox, the
  graph, its torchvision NMS), run in the separate peers environment.

Both models must be trained (random weights give a meaningless NMS load). Each image is
predicted once per round after a warm-up; rounds alternate between the two processes.

    python benchmarks/e2e_latency.py --detforge runs/a/weights/best.pt --yolo path/to/yolo/best.pt \\
        --images ../shared/datasets/bccd/JPEGImages [--imgsz 640 --threads 2 --count 50 --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from onnx_latency import export_yolo  # noqa: E402
from peers_env import ensure_peers  # noqa: E402

DETFORGE_RUN = """
import json, sys, time
import numpy as np
from detforge import Predictor
model, threads, paths, warmup = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
p = Predictor(model, conf=0.25, threads=threads)
for path in paths[:warmup]:
    p.predict(path)
times, boxes = [], 0
for path in paths:
    start = time.perf_counter()
    det = p.predict(path)[0]
    times.append((time.perf_counter() - start) * 1000)
    boxes += len(det.boxes)
print(json.dumps({"ms": times, "boxes": boxes}))
"""

ULTRALYTICS_RUN = """
import json, sys, time
import onnxruntime
from ultralytics import YOLO
model, threads, paths, warmup, imgsz = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
yolo = YOLO(model, task="detect")
for path in paths[:warmup]:
    yolo.predict(path, imgsz=imgsz, conf=0.25, device="cpu", verbose=False)
times, boxes, parts = [], 0, []
for path in paths:
    start = time.perf_counter()
    r = yolo.predict(path, imgsz=imgsz, conf=0.25, device="cpu", verbose=False)[0]
    times.append((time.perf_counter() - start) * 1000)
    boxes += len(r.boxes)
    parts.append(r.speed)
print(json.dumps({"ms": times, "boxes": boxes, "parts": parts}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--detforge", type=Path, required=True, help="a trained detforge checkpoint (best.pt)")
    parser.add_argument("--yolo", type=Path, required=True, help="a trained Ultralytics checkpoint (best.pt)")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/detforge-e2e-latency"))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import numpy as np

    from detforge import Detector

    peers = ensure_peers(args.peers)
    args.work.mkdir(parents=True, exist_ok=True)
    paths = sorted(str(p) for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count]
    if not paths:
        raise SystemExit(f"{args.images}: no images")
    detforge_onnx = Detector(str(args.detforge)).export(format="onnx", imgsz=args.imgsz,
                                                       out=str(args.work / f"detforge_{args.imgsz}"))
    yolo_copy = args.work / f"yolo_{args.imgsz}.pt"
    yolo_copy.write_bytes(args.yolo.read_bytes())  # the export lands in the work folder with it
    yolo_onnx = export_yolo(peers, yolo_copy.name, args.work, args.imgsz)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    times: dict[str, list[float]] = {"detforge": [], "ultralytics": []}
    boxes: dict[str, int] = {}
    parts: list[dict] = []
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", DETFORGE_RUN, str(detforge_onnx), str(args.threads), json.dumps(paths),
                              str(args.warmup)], env=env, capture_output=True, text=True, check=True)
        d = json.loads(out.stdout.strip().splitlines()[-1])
        times["detforge"] += d["ms"]
        boxes["detforge"] = d["boxes"]
        out = subprocess.run([str(peers), "-c", ULTRALYTICS_RUN, str(yolo_onnx), str(args.threads), json.dumps(paths),
                              str(args.warmup), str(args.imgsz)], env=env, capture_output=True, text=True, check=True)
        u = json.loads(out.stdout.strip().splitlines()[-1])
        times["ultralytics"] += u["ms"]
        boxes["ultralytics"] = u["boxes"]
        parts += u["parts"]
    print(f"| Pipeline ({args.imgsz} px, {args.threads} threads, file -> boxes) | p50 (ms) | p90 (ms) | mean (ms) | "
          "timed calls | boxes on the images |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in times.items():
        a = np.array(t)
        print(f"| {name} | {np.median(a):.1f} | {np.percentile(a, 90):.1f} | {a.mean():.1f} | {len(a)} | {boxes[name]} |")
    med = {k: float(np.median([p[k] for p in parts])) for k in ("preprocess", "inference", "postprocess")}
    print("Ultralytics' own split (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load,
                      "load_after": os.getloadavg()[0], "imgsz": args.imgsz, "threads": args.threads,
                      "p50": {k: float(np.median(v)) for k, v in times.items()}, "ultralytics_parts": med}))


if __name__ == "__main__":
    main()
