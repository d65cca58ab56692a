"""`detforge bench data`: augmented training images/s of the data pipeline alone (decode,
mosaic, affine, HSV, flips, collate) for each worker count; per-worker figures show how well
it scales with cores (workers=0 runs in the main process: one core)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import torch

from detforge.bench.args import int_list, resolve
from detforge.bench.report import write_report

LOG = logging.getLogger("detforge")

DEFAULTS = {"data": "", "workers": "0,1,2", "imgsz": 640, "batch": 16, "batches": 20, "warmup": 2, "seed": 0,
            "cache": "false", "out": "runs/bench/data"}
COLUMNS = [("workers", "Workers", ""), ("images_per_s", "Images/s", ".1f"), ("per_core", "Images/s per core", ".1f"),
           ("images", "Images timed", "")]


def run_data_speed(args: dict) -> list[dict]:
    from detforge.config import build_config
    from detforge.data.dataset import DetectionDataset
    from detforge.data.formats import load_dataset
    from detforge.data.loader import build_dataloader, loader_set_epoch

    opts = resolve("data", args, DEFAULTS)
    cfg = build_config({"data": opts["data"] or None, "imgsz": int(opts["imgsz"]), "seed": int(opts["seed"]),
                        "cache": opts["cache"]})
    data = load_dataset(cfg.data)
    samples = data.splits.get("train") or []
    if not samples:
        raise ValueError(f"{data.root}: the train split has no images")
    dataset = DetectionDataset(samples, cfg, train=True, cache=cfg.cache)
    batch, warmup, count = int(opts["batch"]), int(opts["warmup"]), int(opts["batches"])
    rows = []
    # loader processes are forked before the main process runs any augmentation itself: a
    # fork taken while OpenCV's thread pool is live can deadlock the children
    for workers in sorted(int_list(opts["workers"], "workers"), key=lambda w: (w == 0, w)):
        if workers == 0:  # in the main process: one core, like one worker
            cv2.setNumThreads(1)
            torch.set_num_threads(1)
        loader = build_dataloader(dataset, batch, train=True, workers=workers, seed=cfg.seed, drop_last=True)
        images, epoch, start = 0, 0, None
        done = False
        while not done:
            loader_set_epoch(loader, epoch)
            for i, (x, _, _) in enumerate(loader):
                seen = epoch * len(loader) + i + 1
                if seen == warmup:  # workers started and their first batches made
                    start = time.perf_counter()
                elif seen > warmup:
                    images += x.shape[0]
                if seen >= warmup + count:
                    done = True
                    break
            epoch += 1
        elapsed = time.perf_counter() - (start or time.perf_counter())
        del loader  # stop persistent workers before the next count
        rate = images / max(elapsed, 1e-9)
        rows.append({"workers": workers, "images_per_s": rate, "per_core": rate / max(workers, 1), "images": images})
        LOG.info("workers=%d: %.1f images/s", workers, rate)
    rows.sort(key=lambda r: r["workers"])
    title = (f"data pipeline: {data.root} ({len(samples)} train images) | {cfg.imgsz} | mosaic {cfg.mosaic} | "
             f"batch {batch} | cache {cfg.cache}")
    table = write_report(rows, COLUMNS, Path(opts["out"]), "data_speed", title)
    print(f"{title}\n{table}")
    return rows
