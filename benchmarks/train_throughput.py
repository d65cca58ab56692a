"""Training throughput of detforge's D-FINE against the official implementation, same device,
same batch, same synthetic batches (model + loss + optimizer step; data loading excluded,
which `detforge bench train` measures separately).

Each side runs in its own process: detforge from this repository's environment, the official
model and criterion from a read-only checkout (--official) in the peers environment, built
from its own config (configs/dfine/dfine_hgnetv2_{size}_coco.yml). The step is the official
training step for both: forward under autocast (``--amp fp16|bf16|off``), loss in float32,
GradScaler for fp16, AdamW, gradient clipping at 0.1. Both see the same seeded batch of random
images with 1-8 random boxes each (80 classes); images/s is taken over --iters steps after
--warmup, with the device synchronised at both ends.

    python benchmarks/train_throughput.py --official /path/to/D-FINE --size s --batch 32 --imgsz 640 --device cuda

On a CPU it runs too (small --batch / --imgsz), which is how the script is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fake_batch(batch: int, imgsz: int, classes: int, seed: int):
    """Images in 0..1 and targets as normalised cxcywh (the official format)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 9, (1,), generator=g))
        wh = 0.03 + 0.17 * torch.rand(n, 2, generator=g)
        centre = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
        targets.append({"labels": torch.randint(0, classes, (n,), generator=g), "boxes": torch.cat([centre, wh], 1)})
    return images, targets


def build_detforge(size: str):
    sys.path.insert(0, str(HERE.parent))
    from detforge.models.zoo import build_model

    return build_model(f"dfine-{size}", 80)


def step_detforge(model, images, targets, autocast):
    """detforge's contract: absolute xyxy boxes in, the weighted loss terms out."""
    import torch

    converted = []
    for t in targets:
        c, wh = t["boxes"][:, :2], t["boxes"][:, 2:]
        xyxy = torch.cat([c - wh / 2, c + wh / 2], 1) * images.shape[-1]
        converted.append({"labels": t["labels"], "boxes": xyxy, "weights": torch.ones(len(xyxy), device=xyxy.device)})
    with autocast():
        return sum(model(images, converted).values())


def build_official(source: Path, size: str):
    sys.path.insert(0, str(source.resolve()))
    # the package __init__ imports calflops for its profiler helper; training never calls it
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
    from src.core import YAMLConfig

    cfg = YAMLConfig(str(source / f"configs/dfine/dfine_hgnetv2_{size}_coco.yml"))
    cfg.yaml_cfg["HGNetv2"]["pretrained"] = False
    return cfg.model, cfg.criterion


def step_official(model, criterion, images, targets, autocast, step):
    import torch

    with autocast():
        outputs = model(images, targets=targets)
    with torch.autocast(device_type=images.device.type, enabled=False):
        losses = criterion(outputs, targets, epoch=0, step=step, global_step=step, epoch_step=1000)
    return sum(losses.values())


def run_side(args) -> dict:
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "official":
        model, criterion = build_official(args.official, args.size)
        criterion.to(device)
    else:
        model, criterion = build_detforge(args.size), None
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[args.amp]
    if dtype is torch.float16 and device.type != "cuda":
        dtype = None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    images, targets = fake_batch(args.batch, args.imgsz, 80, args.seed)
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    start = 0.0
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        if args.side == "official":
            loss = step_official(model, criterion, images, targets, autocast, i)
        else:
            loss = step_detforge(model, images, targets, autocast)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.iters
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"side": args.side, "images_per_s": args.batch / seconds, "step_ms": 1000 * seconds, "peak_gib": peak,
            "loss": float(loss.detach()), "params": sum(p.numel() for p in params)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--official", type=Path, help="official D-FINE checkout (its side is skipped when absent)")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/peers"))
    parser.add_argument("--size", default="s", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", default="bf16", choices=["fp16", "bf16", "off"])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=["detforge", "official"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # one side, in this process
        print(json.dumps(run_side(args)))
        return
    sides = ["detforge"]
    python = {"detforge": sys.executable}
    if args.official and args.official.is_dir():
        sys.path.insert(0, str(HERE))
        from peers_env import ensure_peers

        python["official"] = str(ensure_peers(args.peers))
        sides.append("official")
    passed = list(sys.argv[1:])
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for _ in range(args.rounds):
        for side in sides:
            out = subprocess.run([python[side], __file__, *passed, "--side", side], capture_output=True, text=True,
                                 env={**os.environ})
            if out.returncode != 0:
                raise SystemExit(f"{side} side failed:\n{out.stderr[-3000:]}")
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{side}: {results[side][-1]['images_per_s']:.2f} images/s", flush=True)
    print(f"| D-FINE-{args.size.upper()} training ({args.device}, batch {args.batch}, {args.imgsz} px, amp {args.amp}) "
          "| images/s (best round) | step (ms) | peak GiB | parameters |")
    print("|---|---:|---:|---:|---:|")
    for side, rows in results.items():
        best = max(rows, key=lambda r: r["images_per_s"])
        peak = f"{best['peak_gib']:.1f}" if best["peak_gib"] is not None else "-"
        print(f"| {side} | {best['images_per_s']:.2f} | {best['step_ms']:.1f} | {peak} | {best['params']:,} |")
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args) | {"official": str(args.official)},
                      "results": results}, default=str))


if __name__ == "__main__":
    main()
