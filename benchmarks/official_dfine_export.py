"""Export the official D-FINE implementation (a read-only checkout given by --source) to ONNX
the way its own tools/deployment/export_onnx.py does: deploy-form model + its postprocessor,
inputs (images, orig_target_sizes). Random weights (no downloads); latency does not depend on
them. The TorchScript exporter is asked for explicitly (``dynamo=False``): torch >= 2.9 would
otherwise pick the dynamo exporter, whose D-FINE bugs are the reason detforge avoids it.

    python benchmarks/official_dfine_export.py --source /path/to/D-FINE --size n --out dfine_n_official.onnx
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="checkout of the official D-FINE repository")
    parser.add_argument("--size", default="n", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.source).resolve()))
    # its profiler helper imports calflops (and through it transformers) at package import;
    # export never calls it, so an empty stand-in keeps those large packages out
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))
    from src.core import YAMLConfig

    cfg = YAMLConfig(str(Path(args.source) / f"configs/dfine/dfine_hgnetv2_{args.size}_coco.yml"))
    cfg.yaml_cfg["HGNetv2"]["pretrained"] = False

    class Deployed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = cfg.model.deploy()
            self.postprocessor = cfg.postprocessor.deploy()

        def forward(self, images, orig_target_sizes):
            return self.postprocessor(self.model(images), orig_target_sizes)

    model = Deployed().eval()
    images = torch.rand(1, 3, args.imgsz, args.imgsz)
    sizes = torch.tensor([[args.imgsz, args.imgsz]])
    with torch.no_grad():
        model(images, sizes)
        torch.onnx.export(model, (images, sizes), args.out, dynamo=False, opset_version=args.opset,
                          input_names=["images", "orig_target_sizes"], output_names=["labels", "boxes", "scores"],
                          dynamic_axes={"images": {0: "N"}, "orig_target_sizes": {0: "N"}}, do_constant_folding=True)
    print(args.out)


if __name__ == "__main__":
    main()
