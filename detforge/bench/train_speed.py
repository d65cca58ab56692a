"""`detforge bench train`: training images/s on the real data pipeline and on fake data
(one pre-made batch reused: no decode, no augmentation). The gap between the two is the
cost of data loading that the GPU/CPU waits for."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from detforge.bench.args import as_bool, resolve
from detforge.bench.report import write_report

LOG = logging.getLogger("detforge")

DEFAULTS = {
    "model": "dfine-n", "data": "", "batch": 8, "imgsz": 640, "workers": 2, "device": "auto", "iters": 20,
    "warmup": 5, "fake_data": "both", "amp": True, "threads": 0, "seed": 0, "out": "runs/bench/train",
}
COLUMNS = [("data", "Data", ""), ("batch", "Batch", ""), ("imgsz", "Size", ""), ("images_per_s", "Images/s", ".2f"),
           ("step_ms", "Step (ms)", ".1f"), ("steps", "Timed steps", "")]


def fake_batches(batch: int, imgsz: int, num_classes: int, seed: int):
    """One fixed batch of random uint8 images with 1-8 random boxes each, yielded forever."""
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, imgsz, imgsz), dtype=np.uint8))
    targets = []
    for _ in range(batch):
        n = int(rng.integers(1, 9))
        xy = rng.uniform(0, imgsz * 0.8, (n, 2))
        wh = rng.uniform(imgsz * 0.03, imgsz * 0.2, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, imgsz)], 1).astype(np.float32)
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(rng.integers(0, num_classes, n)),
                        "weights": torch.ones(n)})
    while True:
        yield images, targets, None


def real_batches(cfg, batch: int, workers: int):
    from detforge.data.dataset import DetectionDataset
    from detforge.data.formats import load_dataset
    from detforge.data.loader import build_dataloader, loader_set_epoch

    data = load_dataset(cfg.data)
    samples = data.splits.get("train") or []
    if not samples:
        raise ValueError(f"{data.root}: the train split has no images")
    dataset = DetectionDataset(samples, cfg, train=True)
    loader = build_dataloader(dataset, batch, train=True, workers=workers, seed=cfg.seed, drop_last=True)
    epoch = 0
    while True:  # as many epochs as the timing needs
        loader_set_epoch(loader, epoch)
        yield from loader
        epoch += 1


def time_training(model, batches, device: torch.device, steps: int, warmup: int, amp: bool) -> float:
    """Seconds per optimizer step (mean over ``steps`` after ``warmup``), data wait included."""
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dtype = torch.float16 if amp and device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is not None)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        images, targets, _ = next(batches)
        x = images.to(device, non_blocking=True).float().div_(255)
        tgts = [{k: v.to(device) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(model(x, tgts).values())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def run_train_speed(args: dict) -> list[dict]:
    from detforge.config import build_config
    from detforge.models.zoo import build_model
    from detforge.utils.runtime import select_device

    opts = resolve("train", args, DEFAULTS)
    modes = {"both": ["real", "fake"], "true": ["fake"], "false": ["real"]}.get(str(opts["fake_data"]).lower())
    if modes is None:
        as_bool(opts["fake_data"], "fake_data")  # raises with the allowed values
    if "real" in modes and not opts["data"]:
        raise ValueError("bench train needs data=PATH for the real-data run (or fake_data=true)")
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    device = select_device(str(opts["device"]))
    batch, imgsz = int(opts["batch"]), int(opts["imgsz"])
    rows = []
    for mode in modes:
        torch.manual_seed(int(opts["seed"]))
        if mode == "real":
            cfg = build_config({"data": opts["data"], "imgsz": imgsz, "seed": opts["seed"], "workers": opts["workers"]})
            from detforge.data.formats import load_dataset

            num_classes = len(load_dataset(cfg.data).names)
            batches = real_batches(cfg, batch, int(opts["workers"]))
        else:
            num_classes = 80
            if opts["data"]:
                from detforge.data.formats import load_dataset

                num_classes = len(load_dataset(opts["data"]).names)
            batches = fake_batches(batch, imgsz, num_classes, int(opts["seed"]))
        model = build_model(str(opts["model"]), num_classes)
        step = time_training(model, batches, device, int(opts["iters"]), int(opts["warmup"]), bool(opts["amp"]))
        rows.append({"data": mode, "batch": batch, "imgsz": imgsz, "images_per_s": batch / step, "step_ms": 1000 * step,
                     "steps": int(opts["iters"]), "model": opts["model"], "device": str(device)})
        LOG.info("%s data: %.2f images/s (%.1f ms per step)", mode, batch / step, 1000 * step)
    title = f"training throughput: {opts['model']} | device {device} | batch {batch} | {imgsz} | workers {opts['workers']}"
    table = write_report(rows, COLUMNS, Path(opts["out"]), "train_speed", title)
    print(f"{title}\n{table}")
    if len(rows) == 2:
        print(f"real / fake = {rows[0]['images_per_s'] / rows[1]['images_per_s']:.2f} (1.00: data loading costs nothing)")
    return rows
