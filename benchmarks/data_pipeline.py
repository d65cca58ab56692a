"""Training data pipeline throughput on one core: detforge's DetectionDataset against the
Ultralytics YOLODataset, both in train mode with the same augmentations (mosaic 1.0,
affine translate 0.1 / scale 0.5, HSV 0.015 / 0.7 / 0.4, horizontal flip 0.5; no mixup)
at 640 on BCCD's train split, measured side by side in one run.

Each side produces samples in its own process with one OpenCV / torch thread (no loader
workers: samples/s per core). Rounds alternate between the two so load drift hits both;
the table reports the median over rounds. Ultralytics reads YOLO labels, written here
into a temporary copy of the split (images are symlinked, never copied).

detforge runs as in its loader workers (glibc told to keep freed memory, see
``detforge.data.loader.retain_freed_memory``), with its default colour jitter (one YIQ
matrix) and with ``hsv_mode=opencv`` (the HSV round trip Ultralytics uses); Ultralytics runs
as shipped and with the same glibc setting, so each effect can be read off separately.

Caching differs by design: Ultralytics keeps the last 8 x batch decoded images in RAM and
draws most mosaic partners from them, so once warm it decodes ~1 image per sample; detforge
with cache=false decodes all 4 mosaic tiles, with cache=ram none. Both detforge modes run.

    python benchmarks/data_pipeline.py --data ../shared/datasets/bccd [--samples 200 --rounds 3]
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
from peers_env import ensure_peers  # noqa: E402

ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

DETFORGE_RUN = """
import json, sys, time
import cv2, torch
cv2.setNumThreads(1); torch.set_num_threads(1)
from detforge.config import build_config
from detforge.data.dataset import DetectionDataset
from detforge.data.formats import load_dataset
from detforge.data.loader import retain_freed_memory
retain_freed_memory()  # as detforge's loader workers do
data, imgsz, n, warmup, cache, hsv_mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
cfg = build_config({"data": data, "imgsz": imgsz, "mosaic": 1.0, "mixup": 0.0, "translate": 0.1, "scale": 0.5,
                    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "fliplr": 0.5, "degrees": 0.0, "shear": 0.0,
                    "cache": cache, "close_mosaic": 0, "epochs": 100, "hsv_mode": hsv_mode})
ds = DetectionDataset(load_dataset(cfg.data).splits["train"], cfg, train=True, cache=cfg.cache)
for i in range(warmup):
    ds[i % len(ds)]
start = time.perf_counter()
for i in range(n):
    img, target, meta = ds[(warmup + i) % len(ds)]
print(json.dumps({"samples_per_s": n / (time.perf_counter() - start), "shape": list(img.shape)}))
"""

ULTRALYTICS_RUN = """
import ctypes, json, os, sys, time
import cv2, torch
if os.environ.get("RETAIN_FREED_MEMORY"):  # the same glibc setting as detforge's workers
    libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-3, 32 << 20); libc.mallopt(-1, 256 << 20)
cv2.setNumThreads(1); torch.set_num_threads(1)
from ultralytics.cfg import get_cfg
from ultralytics.data.build import build_yolo_dataset
from ultralytics.utils import DEFAULT_CFG
images, names, imgsz, n, warmup = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "mosaic": 1.0, "mixup": 0.0, "translate": 0.1, "scale": 0.5,
                            "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "fliplr": 0.5, "degrees": 0.0, "shear": 0.0,
                            "cache": False, "close_mosaic": 0})
ds = build_yolo_dataset(cfg, images, 16, {"names": dict(enumerate(names)), "nc": len(names), "channels": 3}, mode="train")
for i in range(warmup):
    ds[i % len(ds)]
start = time.perf_counter()
for i in range(n):
    item = ds[(warmup + i) % len(ds)]
print(json.dumps({"samples_per_s": n / (time.perf_counter() - start), "shape": list(item["img"].shape)}))
"""


def yolo_copy(data: str, out: Path) -> tuple[Path, list[str]]:
    """The train split as images/ (symlinks) + labels/ (YOLO txt) for Ultralytics."""
    from detforge.data.formats import load_dataset

    dataset = load_dataset(data)
    images, labels = out / "images" / "train", out / "labels" / "train"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for s in dataset.splits["train"]:
        link = images / s.image_path.name
        if not link.exists():
            link.symlink_to(s.image_path.resolve())
        lines = []
        for (x1, y1, x2, y2), c in zip(s.boxes, s.labels):
            lines.append(f"{c} {(x1 + x2) / 2 / s.width:.6f} {(y1 + y2) / 2 / s.height:.6f} "
                         f"{(x2 - x1) / s.width:.6f} {(y2 - y1) / s.height:.6f}")
        (labels / f"{s.image_path.stem}.txt").write_text("\n".join(lines) + "\n")
    return images, list(dataset.names)


def run(cmd: list[str], extra_env: dict | None = None) -> dict:
    env = {**os.environ, **ONE_CORE, **(extra_env or {})}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/detforge-data-bench"))
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    peers = ensure_peers(args.peers)
    images, names = yolo_copy(args.data, args.work)
    detforge_arms = [("false", "matrix"), ("ram", "matrix"), ("false", "opencv")]
    results: dict[str, list[float]] = {f"detforge cache={c} hsv_mode={h}": [] for c, h in detforge_arms}
    results.update({"ultralytics": [], "ultralytics, freed memory retained": []})
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for cache, hsv_mode in detforge_arms:
            d = run([sys.executable, "-c", DETFORGE_RUN, args.data, str(args.imgsz), str(args.samples), str(args.warmup),
                     cache, hsv_mode])
            results[f"detforge cache={cache} hsv_mode={hsv_mode}"].append(d["samples_per_s"])
        for name, extra in (("ultralytics", {}), ("ultralytics, freed memory retained", {"RETAIN_FREED_MEMORY": "1"})):
            u = run([str(peers), "-c", ULTRALYTICS_RUN, str(images), json.dumps(names), str(args.imgsz), str(args.samples),
                     str(args.warmup)], extra)
            results[name].append(u["samples_per_s"])
        print("round: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in results.items()))
    import statistics

    med = {k: statistics.median(v) for k, v in results.items()}
    print("| Pipeline (1 core, 640, train augmentation) | samples/s (median) | rounds |")
    print("|---|---:|---|")
    for k, v in results.items():
        print(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} |")
    for cache, hsv_mode in detforge_arms:
        name = f"detforge cache={cache} hsv_mode={hsv_mode}"
        print(f"{name} / ultralytics = {med[name] / med['ultralytics']:.2f}x per core")
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load,
                      "load_after": os.getloadavg()[0], "median": med, "rounds": results}))


if __name__ == "__main__":
    main()
