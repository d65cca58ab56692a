"""Training memory of a detector, counted rather than estimated: parameters, gradients, Adam /
LARS optimizer state, and the activations autograd keeps for the backward pass, measured on
the CPU by summing every tensor saved for backward (distinct storages, parameters excluded)
during one training forward at the given batch and size. Activations grow linearly with the
batch, so a small measured batch scales to a larger one.

    .venv/bin/python benchmarks/rcnn_memory.py model=mask-rcnn-r50 imgsz=640 batch=2 classes=80

Prints one Markdown table row per quantity (MiB) for the measured batch and for batch 16.
"""

from __future__ import annotations

import sys
import time

import torch

from detforge.models.zoo import build_model


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor, targets: list[dict]) -> tuple[int, float]:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = model(images, targets)
    elapsed = time.perf_counter() - start
    sum(losses.values()).backward()
    return sum(seen.values()), elapsed


def scene(batch: int, size: int, with_masks: bool) -> tuple[torch.Tensor, list[dict]]:
    """Images with 8 objects each (COCO averages ~7 per image)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        xy = torch.rand(8, 2, generator=g) * size * 0.7
        wh = 16 + torch.rand(8, 2, generator=g) * size * 0.25
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        t = {"boxes": boxes, "labels": torch.randint(0, 3, (8,), generator=g)}
        if with_masks:
            masks = torch.zeros(8, size, size, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            t["masks"] = masks
        targets.append(t)
    return images, targets


def main(argv: list[str]) -> None:
    args = {k: v for k, v in (a.split("=", 1) for a in argv)}
    name = args.get("model", "mask-rcnn-r50")
    size = int(args.get("imgsz", 640))
    batch = int(args.get("batch", 2))
    classes = int(args.get("classes", 80))
    torch.manual_seed(0)
    model = build_model(name, classes).train()
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    images, targets = scene(batch, size, model.supports_masks)
    act, seconds = saved_activation_bytes(model, images, targets)
    mib = 2**20
    rows = [
        ("parameters (fp32)", 4 * n_params, False),
        ("gradients (fp32)", 4 * n_train, False),
        ("Adam moments (2 x fp32)", 8 * n_train, False),
        ("LARS momentum (fp32)", 4 * n_train, False),
        (f"activations saved for backward (fp32, {size} px)", act, True),
    ]
    print(f"{name}, {classes} classes: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trainable); "
          f"forward at batch {batch} took {seconds:.1f} s")
    print(f"| quantity | batch {batch} (MiB) | batch 16 (MiB) |")
    print("|---|---:|---:|")
    for label, nbytes, per_image in rows:
        at16 = nbytes * 16 / batch if per_image else nbytes
        print(f"| {label} | {nbytes / mib:.0f} | {at16 / mib:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
