"""Parameters, GFLOPs and CPU latency of every D-FINE size (deploy form), at one input size.

GFLOPs are counted by torch.utils.flop_counter (one multiply-add = 2 FLOPs) on the deploy
form's eval forward; latency is torch eager on the CPU, batch 1, after warm-up, as the median
of interleaved rounds. Usage:

    python benchmarks/dfine_speed.py --imgsz 640 --threads 2 --iters 5 [--sizes n,s,m,l,x]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from detforge.models.zoo import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sizes", default="n,s,m,l,x")
    ap.add_argument("--classes", type=int, default=80)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.rand(1, 3, args.imgsz, args.imgsz)
    rows = []
    for size in args.sizes.split(","):
        model = build_model(f"dfine-{size}", args.classes).eval()
        params = sum(p.numel() for p in model.parameters())
        model.deploy()
        deploy_params = sum(p.numel() for p in model.parameters())
        with torch.inference_mode():
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops = counter.get_total_flops()
            for _ in range(args.warmup):
                model.postprocess(model(x), (args.imgsz, args.imgsz))
            times = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                model.postprocess(model(x), (args.imgsz, args.imgsz))
                times.append((time.perf_counter() - t0) * 1000)
        rows.append((size, params, deploy_params, flops / 1e9, statistics.median(times), min(times)))
        print(f"dfine-{size}: params {params:,} (deploy {deploy_params:,}), {flops / 1e9:.2f} GFLOPs, "
              f"p50 {statistics.median(times):.1f} ms", flush=True)
    print(f"\n| model | params ({args.classes} classes) | params (deploy) | GFLOPs @{args.imgsz} | "
          f"CPU p50 (ms, {args.threads} threads, torch) | min (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for size, p, dp, g, p50, mn in rows:
        print(f"| D-FINE-{size.upper()} | {p:,} | {dp:,} | {g:.2f} | {p50:.1f} | {mn:.1f} |")


if __name__ == "__main__":
    main()
