"""Ultralytics YOLO11n from scratch on a detforge-readable dataset, several seeds, every epoch
scored by detforge's own evaluator (the one `detforge eval` and `detforge train` use), so YOLO11n
and detforge models are compared with one evaluator.

Each seed trains ``yolo11n.yaml`` (no pretrained weights) in the peers venv
(benchmarks/peers_env.py) with ``save_period=1``; every epoch's checkpoint (Ultralytics saves
its EMA weights) then predicts the val split at conf 0.001, IoU 0.7, max_det 300 (Ultralytics'
own validation settings), and detforge.eval.evaluate_files scores the COCO results against a
COCO ground truth written from the same split.

    python benchmarks/sparse_yolo.py --data /work/data/bccd_wbc --imgsz 320 --batch 16 --epochs 25 \\
        --seeds 0 1 2 --project /work/runs/sparse --name wbc_yolo11n --out sparse_results.jsonl
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

# train, then predict val with every epoch's checkpoint; prints one JSON line per epoch file
ULTRALYTICS_RUN = """
import json, sys
from pathlib import Path
from ultralytics import YOLO
data, imgsz, batch, epochs, seed, project, name, images_json, out_dir, nbs = sys.argv[1:11]
# nbs: Ultralytics' nominal batch; it steps the optimizer every round(nbs / batch) batches
extra = {"nbs": int(nbs)} if int(nbs) > 0 else {}
model = YOLO("yolo11n.yaml")
model.train(data=data, imgsz=int(imgsz), batch=int(batch), epochs=int(epochs), device="cpu", workers=0,
            project=project, name=name, exist_ok=True, pretrained=False, amp=False, plots=False,
            seed=int(seed), deterministic=False, verbose=False, save_period=1, **extra)
weights = Path(model.trainer.save_dir) / "weights"
images = json.loads(Path(images_json).read_text())
for e in range(1, int(epochs) + 1):
    # Ultralytics numbers its per-epoch files from 0: epoch{e-1}.pt holds the weights after epoch e
    ckpt = weights / f"epoch{e - 1}.pt"
    if not ckpt.is_file():
        ckpt = weights / "last.pt" if e == int(epochs) else None
    if ckpt is None:
        continue
    net = YOLO(str(ckpt))
    results = []
    for img in images:
        r = net.predict(img["path"], imgsz=int(imgsz), conf=0.001, iou=0.7, max_det=300, device="cpu", verbose=False)[0]
        b = r.boxes
        for (x1, y1, x2, y2), s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist()):
            results.append({"image_id": img["id"], "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(s)})
    out = Path(out_dir) / f"pred_epoch{e}.json"
    out.write_text(json.dumps(results))
    print("PRED", e, out, flush=True)
"""


def write_gt(data: str, split: str, out: Path) -> tuple[Path, Path]:
    """COCO ground truth of ``split`` (ids 1..N, categories 1..K) and the image list for predict."""
    from detforge.data.formats import load_dataset

    ds = load_dataset(data)
    samples = ds.splits[split]
    images, anns, paths = [], [], []
    for i, s in enumerate(samples, 1):
        images.append({"id": i, "file_name": s.image_path.name, "width": s.width, "height": s.height})
        paths.append({"id": i, "path": str(s.image_path)})
        for (x1, y1, x2, y2), label in zip(s.boxes.tolist(), s.labels.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    out.mkdir(parents=True, exist_ok=True)
    gt = out / f"gt_{split}.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": i + 1, "name": n} for i, n in enumerate(ds.names)]}))
    listing = out / f"images_{split}.json"
    listing.write_text(json.dumps(paths))
    return gt, listing


def ultralytics_yaml(data: str, out: Path) -> Path:
    """data.yaml with an absolute path (Ultralytics resolves a relative one against its own folder)."""
    import yaml

    src = Path(data) / "data.yaml" if Path(data).is_dir() else Path(data)
    spec = yaml.safe_load(src.read_text())
    spec["path"] = str(src.parent.resolve())
    path = out / "data_ultralytics.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_seed(args: argparse.Namespace, seed: int, gt: Path, listing: Path, data_yaml: Path) -> dict:
    from peers_env import ensure_peers

    from detforge.eval.eval_files import evaluate_files

    name = f"{args.name}_s{seed}"
    work = Path(args.project) / name
    preds = work / "detforge_eval"
    preds.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.time()
    out = subprocess.run(
        [str(ensure_peers(args.peers)), "-c", ULTRALYTICS_RUN, str(data_yaml), str(args.imgsz), str(args.batch),
         str(args.epochs), str(seed), str(Path(args.project).resolve()), name, str(listing), str(preds),
         str(args.nbs or 0)],
        env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    curve = []
    for line in out.stdout.splitlines():
        if line.startswith("PRED "):
            _, epoch, path = line.split(" ", 2)
            m = evaluate_files(gt, path, conf=0.25, save_dir=preds / f"eval_epoch{epoch}")
            curve.append({"epoch": int(epoch), "map50_95": m["map50_95"], "map50": m["map50"], "f1": m.get("f1", float("nan"))})
    for f in (work / "weights").glob("epoch*.pt"):
        f.unlink()  # 25 checkpoints per seed are not worth keeping
    return {"run": name, "arm": "yolo11n", "seed": seed, "data": args.data, "imgsz": args.imgsz, "batch": args.batch,
            "epochs": args.epochs, "nbs": args.nbs, "wall_s": round(time.time() - start), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nbs", type=int, default=None,
                        help="Ultralytics' nominal batch (its default 64 steps every 4 batches at batch 16; "
                             "--nbs 16 steps every batch, as detforge does)")
    parser.add_argument("--project", default="runs/sparse")
    parser.add_argument("--name", default="yolo11n")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per seed here")
    args = parser.parse_args()
    work = Path(args.project) / f"{args.name}_data"
    gt, listing = write_gt(args.data, "val", work)
    data_yaml = ultralytics_yaml(args.data, work)
    for seed in args.seeds:
        result = run_seed(args, seed, gt, listing, data_yaml)
        last = result["curve"][-1]
        print(f"{result['run']}: last epoch mAP50-95 {last['map50_95']:.3f} mAP50 {last['map50']:.3f}; "
              + "  ".join(f"{c['epoch']}:{c['map50_95']:.3f}/{c['map50']:.3f}" for c in result["curve"]), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result, default=float) + "\n")


if __name__ == "__main__":
    main()
