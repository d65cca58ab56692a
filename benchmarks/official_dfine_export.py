"""Export the official D-FINE implementation (a read-only checkout given by --source) to ONNX
the way its own tools/deployment/export_onnx.py does: deploy-form model + its postprocessor,
inputs (images, orig_target_sizes). Random weights (no downloads), with ``--trained-like``
given trained-looking norms and affine blocks (benchmarks/trained_like.py) so that none of
their ops is optimised away as an identity. The TorchScript exporter is asked for explicitly (``dynamo=False``): torch >= 2.9 would
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
    parser.add_argument("--trained-like", action="store_true")
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

    if args.trained_like:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from trained_like import make_trained_like

        make_trained_like(cfg.model)  # before deploy(), which builds from these values
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
