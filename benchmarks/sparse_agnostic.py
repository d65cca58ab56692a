"""Per-epoch mAP of a run's saved checkpoints, with and without the class: does a slow start
come from finding the objects or from naming them, and does a low mAP50 come from duplicates?

Train with ``save_period=1`` (weights/epochN.pt, the EMA weights that epoch was validated
with), then:

    python benchmarks/sparse_agnostic.py RUN_DIR [RUN_DIR ...] --data /work/data/synthetic_sparse

For every saved epoch (or only those given, e.g. ``--epochs 8 25``) it scores the val split
three ways with detforge's COCO evaluator: ``mAP50-95 / mAP50`` as trained (class-aware, as the
run logged them), class-agnostic (every prediction and ground-truth box class 0: where the
boxes are, whatever their class) and the share of ground-truth boxes whose best-IoU prediction
among the top 10 of their image has the right class (of those found at IoU >= 0.5); found_any
is the share found at IoU >= 0.5 by any kept prediction (max_det per image): boxes that exist
but are not yet scored near the top. Duplicates:
predictions on an object another, higher-scored prediction already found (IoU >= 0.5, same
class), counted where they outrank the set's weakest hit (only those cost AP), and mAP50 after a
class-wise NMS at IoU 0.7 (what YOLO-style post-processing would read; a diagnostic only, the
DETRs' deploy graph has no NMS). One JSON line per run and epoch goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms, box_iou

from detforge.api import Detector
from detforge.data.dataset import DetectionDataset
from detforge.data.formats import load_dataset
from detforge.data.loader import build_dataloader
from detforge.engine.resolve import command_config
from detforge.engine.validator import predict_loader
from detforge.eval.coco import coco_map
from detforge.records import Detections


def _agnostic(det: Detections) -> Detections:
    """Class 0 for all; a DETR query scored for several classes counts once (its best)."""
    if len(det.scores) == 0:
        return Detections(det.boxes, det.scores, np.zeros(0, np.int64))
    _, first = np.unique(det.boxes.round(2), axis=0, return_index=True)  # scores are sorted: first = best
    keep = np.sort(first)
    return Detections(det.boxes[keep], det.scores[keep], np.zeros(len(keep), np.int64))


def _right_class(samples, dets, top: int | None = 10) -> tuple[int, int]:
    """(found at IoU >= 0.5 among an image's top ``top`` (None: all kept), of those with the right class)."""
    found = right = 0
    for s, d in zip(samples, dets):
        if len(s.boxes) == 0 or len(d.scores) == 0:
            continue
        iou = box_iou(torch.as_tensor(s.boxes, dtype=torch.float32), torch.as_tensor(d.boxes[:top]))
        best_iou, best = iou.max(1)
        hit = best_iou >= 0.5
        found += int(hit.sum())
        right += int((torch.as_tensor(d.labels[:top])[best][hit] == torch.as_tensor(s.labels)[hit]).sum())
    return found, right


def _duplicates(samples, dets, iou_thr: float = 0.5) -> int:
    """Predictions on an already-found object (COCO's greedy matching in score order, same class)
    that score above the lowest-scored hit of the whole set: the ones that lower AP at ``iou_thr``."""
    hits, dups = [], []
    for s, d in zip(samples, dets):
        if len(s.boxes) == 0 or len(d.scores) == 0:
            continue
        iou = box_iou(torch.as_tensor(d.boxes, dtype=torch.float32), torch.as_tensor(s.boxes, dtype=torch.float32))
        iou[torch.as_tensor(d.labels)[:, None] != torch.as_tensor(s.labels)[None, :]] = 0
        taken = torch.zeros(len(s.boxes), dtype=torch.bool)
        for k in np.argsort(-d.scores, kind="stable"):
            free = iou[k].masked_fill(taken, 0)
            if free.max() >= iou_thr:
                taken[free.argmax()] = True
                hits.append(d.scores[k])
            elif iou[k].max() >= iou_thr:
                dups.append(d.scores[k])
    return int(sum(score > min(hits) for score in dups)) if hits else 0


def _nms(det: Detections, iou_thr: float = 0.7) -> Detections:
    keep = batched_nms(torch.as_tensor(det.boxes, dtype=torch.float32), torch.as_tensor(det.scores, dtype=torch.float32),
                       torch.as_tensor(det.labels), iou_thr).numpy()
    return Detections(det.boxes[keep], det.scores[keep], det.labels[keep])


def _epoch(ckpt: Path) -> int:
    """weights/epoch12.pt -> 12."""
    return int(re.findall(r"\d+", ckpt.stem)[0])


def score_run(run: Path, data_dir: str, split: str = "val", epochs: list[int] | None = None) -> list[dict]:
    """One row per saved epoch of ``run`` (only ``epochs`` when given)."""
    data = load_dataset(data_dir)
    samples = data.splits[split]
    sizes = [(s.height, s.width) for s in samples]
    gt = [(s.boxes, s.labels) for s in samples]
    gt0 = [(s.boxes, np.zeros_like(s.labels)) for s in samples]
    n_gt = sum(len(s.boxes) for s in samples)
    ckpts = sorted(run.glob("weights/epoch*.pt"), key=_epoch)
    if not ckpts:
        raise SystemExit(f"{run}: no weights/epochN.pt (train with save_period=1)")
    if epochs:
        missing = sorted(set(epochs) - {_epoch(c) for c in ckpts})
        if missing:
            raise SystemExit(f"{run}: no weights for epoch(s) {missing} (train with save_period=1)")
        ckpts = [c for c in ckpts if _epoch(c) in epochs]
    rows = []
    for ckpt in ckpts:
        det = Detector(str(ckpt))
        cfg = command_config("val", {"model": str(ckpt), "data": data_dir, "workers": 0}, base=det._settings())
        loader = build_dataloader(DetectionDataset(samples, cfg, train=False), 16, train=False, workers=0, seed=0)
        # predict_loader runs under no_grad itself
        predicted = predict_loader(det.model, loader, torch.device("cpu"), show=False)
        per_image = {int(meta["index"]): d for meta, d in predicted}
        dets = [per_image[i] for i in range(len(samples))]
        aware = coco_map(gt, dets, len(data.names), sizes)
        blind = coco_map(gt0, [_agnostic(d) for d in dets], 1, sizes)
        found, right = _right_class(samples, dets)
        found_any, _ = _right_class(samples, dets, top=None)
        with_nms = coco_map(gt, [_nms(d) for d in dets], len(data.names), sizes)
        rows.append({
            "run": run.name, "epoch": _epoch(ckpt),
            "map50_95": round(aware["map50_95"], 4), "map50": round(aware["map50"], 4),
            "agnostic_map50_95": round(blind["map50_95"], 4), "agnostic_map50": round(blind["map50"], 4),
            "found_any": round(found_any / max(n_gt, 1), 3), "found_top10": round(found / max(n_gt, 1), 3),
            "right_class_of_found": round(right / max(found, 1), 3),
            "duplicates_above_a_hit": _duplicates(samples, dets), "map50_after_nms07": round(with_nms["map50"], 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--epochs", type=int, nargs="+", help="score only these epochs (default: every saved one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        score_run(run, args.data, args.split, args.epochs)


if __name__ == "__main__":
    main()
