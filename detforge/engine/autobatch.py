"""batch=-1 / batch=0.7: the largest batch that fits a fraction of GPU memory.

Found by trial: real forward+backward steps at doubling batch sizes, reading the peak
memory each time, then a linear fit of memory against batch size solved for the target.
On CPU there is no memory wall worth probing: a fixed default is used and said."""

from __future__ import annotations

import logging

import numpy as np
import torch

LOG = logging.getLogger("detforge")
CPU_DEFAULT = 16


def _synthetic_batch(b: int, imgsz: int, device: torch.device):
    x = torch.rand(b, 3, imgsz, imgsz, device=device)
    t = imgsz / 4
    box = torch.tensor([[t, t, 2 * t, 2 * t]], device=device)
    targets = [{"boxes": box.clone(), "labels": torch.zeros(1, dtype=torch.long, device=device)} for _ in range(b)]
    return x, targets


def auto_batch(model, cfg, device: torch.device, fraction: float = 0.6, max_batch: int = 256) -> int:
    if device.type != "cuda":
        LOG.info("batch=%s: auto batch needs CUDA; using batch=%d on %s", cfg.batch, CPU_DEFAULT, device)
        return CPU_DEFAULT
    total = torch.cuda.get_device_properties(device).total_memory
    model.train()
    sizes, mems = [], []
    b = 1
    while b <= max_batch:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            x, targets = _synthetic_batch(b, cfg.imgsz, device)
            with torch.autocast("cuda", enabled=cfg.amp):
                loss = sum(model(x, targets).values())
            loss.backward()
            model.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            break
        sizes.append(b)
        mems.append(torch.cuda.max_memory_allocated(device))
        if mems[-1] > fraction * total:
            break
        b *= 2
    torch.cuda.empty_cache()
    if len(sizes) < 2:
        chosen = max(1, sizes[0] if sizes else 1)
    else:
        slope, intercept = np.polyfit(sizes, mems, 1)
        chosen = int((fraction * total - intercept) / max(slope, 1.0))
        chosen = max(1, min(chosen, max_batch))
    LOG.info(
        "auto batch: %d (target %.0f%% of %.1f GiB; measured %s)",
        chosen, 100 * fraction, total / 2**30, ", ".join(f"b{s}={m / 2**30:.2f}G" for s, m in zip(sizes, mems)),
    )
    return chosen
