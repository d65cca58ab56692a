"""Accuracy on real data: train a model on BCCD (or any dataset detforge reads) per epoch budget
and record mAP50-95 / mAP50 / F1 on the val split, next to the official D-FINE recipe and, when
asked, Ultralytics YOLO11n from scratch at the same image size, batch and epochs.

Arms (``--arms``):
  detforge   ``detforge train model=MODEL`` with the model's own default recipe
  official   the same model with the official D-FINE custom-data recipe (sizes.official_recipe,
             variant "custom"), VFL instead of MAL; its 500 warm-up steps are capped at 10% of the
             run by the trainer, as for any over-long warm-up
  yolo11n    Ultralytics YOLO11n from yolo11n.yaml (no pretrained weights) in the peers venv
             (benchmarks/peers_env.py); its P/R are Ultralytics' own (at the confidence of best
             mean F1), not detforge's fixed conf=0.5, so its F1 column is not strictly comparable

    python benchmarks/bccd_accuracy.py --data ../shared/datasets/bccd --model dfine-n \\
        --imgsz 416 --batch 16 --epochs 25 --arms detforge official yolo11n --device cpu
    python benchmarks/bccd_accuracy.py --report runs/bccd/dfine-n_detforge_e25   # tables of finished runs

Each run writes its usual run folder under --project; the script prints, per run, the epoch
with the best mAP50-95 and the final epoch, a per-epoch curve, and appends one JSON line per run
to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# YOLO11n from scratch; prints the path of its results.csv
ULTRALYTICS_TRAIN = """
import sys
from ultralytics import YOLO
data, imgsz, batch, epochs, device, workers, project, name = sys.argv[1:9]
model = YOLO("yolo11n.yaml")
model.train(data=data, imgsz=int(imgsz), batch=int(batch), epochs=int(epochs), device=device,
            workers=int(workers), project=project, name=name, exist_ok=True, pretrained=False,
            amp=False, plots=False, seed=0, deterministic=False, verbose=False)
print(model.trainer.save_dir / "results.csv")
"""


def detforge_args(arm: str, model: str, epochs: int) -> list[str]:
    """The recipe keys of an arm on the detforge command line."""
    if arm == "detforge":
        from detforge.models.dfine.recipe import no_aug_epochs

        # the model's recipe holds everything else; its no-augmentation tail depends on the run length
        return [f"close_mosaic={no_aug_epochs(epochs)}"] if model.startswith("dfine") else []
    if arm == "official":
        if not model.startswith("dfine"):
            raise SystemExit(f"--arms official: the official recipe exists for D-FINE models only, not {model}")
        from detforge.models.dfine.sizes import official_recipe

        keys = official_recipe(model, "custom")
        for run_size in ("imgsz", "batch", "epochs", "warmup_iters"):
            keys.pop(run_size)
        return [f"{k}={v}" for k, v in keys.items()] + ["mal=false"]
    raise SystemExit(f"unknown arm {arm!r}; choose from detforge, official, yolo11n")


def read_detforge_curve(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{run_dir}: no metrics.csv (did the run finish an epoch?)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("map50_95", "map50", "f1", "precision", "recall", "time")
    return [{"epoch": int(r["epoch"]), **{k: float(r[k]) for k in keys if r.get(k) not in (None, "")}} for r in rows]


def read_ultralytics_curve(results_csv: Path) -> list[dict[str, float]]:
    with open(results_csv, newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    curve = []
    for r in rows:
        p, rc = float(r["metrics/precision(B)"]), float(r["metrics/recall(B)"])
        curve.append({
            "epoch": int(float(r["epoch"])), "map50_95": float(r["metrics/mAP50-95(B)"]),
            "map50": float(r["metrics/mAP50(B)"]), "precision": p, "recall": rc,
            "f1": 2 * p * rc / (p + rc) if p + rc > 0 else 0.0, "time": float(r.get("time", "nan")),
        })
    return curve


def summarise(name: str, curve: list[dict[str, float]]) -> dict[str, object]:
    if not curve:
        raise SystemExit(f"{name}: no epochs recorded")
    best = max(curve, key=lambda r: r["map50_95"])
    return {"run": name, "epochs_done": len(curve), "best": best, "final": curve[-1], "curve": curve}


def yolo_data(data: str, work: Path) -> Path:
    """BCCD (any layout detforge reads) as a YOLO folder with symlinked images, for Ultralytics."""
    from detforge.data.formats import load_dataset, write_dataset

    import yaml

    yaml_path = work / "data_ultralytics.yaml"
    if not yaml_path.is_file():
        write_dataset(load_dataset(data), work, "yolo", link=True)
        spec = yaml.safe_load((work / "data.yaml").read_text())
        # Ultralytics resolves a relative 'path' against its own datasets folder, not the yaml's
        spec["path"] = str(work.resolve())
        yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return yaml_path


def run_arm(arm: str, args: argparse.Namespace, epochs: int) -> dict[str, object]:
    name = f"{args.model if arm != 'yolo11n' else 'yolo11n'}_{arm}_{args.imgsz}px_e{epochs}"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
    start = time.time()
    if arm == "yolo11n":
        from peers_env import ensure_peers

        peers = ensure_peers(args.peers)
        data_yaml = yolo_data(args.data, Path(args.project) / "bccd_yolo")
        out = subprocess.run(
            [str(peers), "-c", ULTRALYTICS_TRAIN, str(data_yaml), str(args.imgsz), str(args.batch), str(epochs),
             args.device, str(args.workers), str(Path(args.project).resolve()), name],
            env=env, capture_output=True, text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        curve = read_ultralytics_curve(Path(out.stdout.strip().splitlines()[-1]))
    else:
        cmd = [sys.executable, "-m", "detforge", "train", f"model={args.model}", f"data={args.data}",
               f"imgsz={args.imgsz}", f"batch={args.batch}", f"epochs={epochs}", f"device={args.device}",
               f"workers={args.workers}", f"project={args.project}", f"name={name}", "exist_ok=true",
               f"seed={args.seed}", *detforge_args(arm, args.model, epochs)]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit(f"{name} failed; see {Path(args.project) / name / 'train.log'}")
        curve = read_detforge_curve(Path(args.project) / name)
    result = summarise(name, curve)
    result.update(arm=arm, imgsz=args.imgsz, batch=args.batch, epochs=epochs, wall_s=round(time.time() - start),
                  date=time.strftime("%Y-%m-%d", time.gmtime()), load_after=os.getloadavg()[0])
    return result


def print_tables(results: list[dict[str, object]]) -> None:
    print("| run | best epoch | mAP50-95 | mAP50 | F1 | final-epoch mAP50-95 / mAP50 / F1 |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        b, f = r["best"], r["final"]
        print(f"| {r['run']} | {b['epoch']}/{r['epochs_done']} | {b['map50_95']:.3f} | {b['map50']:.3f} | {b['f1']:.3f} "
              f"| {f['map50_95']:.3f} / {f['map50']:.3f} / {f['f1']:.3f} |")
    for r in results:
        print(f"\n{r['run']}: epoch mAP50-95 / mAP50 / F1")
        print("  " + "  ".join(f"{c['epoch']}:{c['map50_95']:.3f}/{c['map50']:.3f}/{c['f1']:.2f}" for c in r["curve"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (BCCD: ../shared/datasets/bccd)")
    parser.add_argument("--model", default="dfine-n")
    parser.add_argument("--arms", nargs="+", default=["detforge", "official"])
    parser.add_argument("--epochs", type=int, nargs="+", default=[25], help="one run per epoch budget")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="OMP threads per run (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--project", default="runs/bccd")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per run here")
    parser.add_argument("--report", nargs="+", type=Path, help="only summarise finished detforge run folders")
    args = parser.parse_args()

    if args.report:
        results = [summarise(d.name, read_detforge_curve(d)) for d in args.report]
    else:
        if not args.data:
            parser.error("--data is required unless --report is given")
        results = [run_arm(arm, args, e) for e in args.epochs for arm in args.arms]
    print_tables(results)
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(r, default=float) + "\n")


if __name__ == "__main__":
    main()
