"""Output parity of detforge's EfficientDet with the reference PyTorch port (effdet,
rwightman/efficientdet-pytorch) on the same weights and images.

    python benchmarks/efficientdet_parity.py --effdet-python /work/venvs/effdet/bin/python \
        [--sizes d0,d1,d2,d3] [--images 4] [--data /work/shared/datasets/bccd]

effdet is never imported by detforge: it runs in its own virtual environment (Python given by
--effdet-python, with ``pip install effdet``) as a child process of this script (``--side
effdet``), and the two exchange files in a temporary folder:
  1. here: real images (BCCD JPEGImages) letterboxed to each size's input (512/640/768/896)
     by detforge's own inference preprocessing -> images.npy (RGB 0..1);
  2. effdet side: ``effdet.create_model('tf_efficientdet_dX', pretrained=False)`` (the key
     layout of the published tf_efficientdet_dX files), weights perturbed so nothing is at its
     initial value (BatchNorm affine terms random, BatchNorm statistics measured on the images
     in training mode, BiFPN fusion weights random, some negative so the ReLU clamps), its
     state dict saved as effdet.pth; class and box head outputs of an eval-mode forward on the
     normalised images, and effdet's anchors, saved as effdet_out.pt;
  3. here: detforge's model of the same size loads effdet.pth through the name map
     (``ModelSpec.load_weights``), runs on the same 0..1 images (normalising inside) and the
     outputs are compared level by level in effdet's layout [B, A*K, H, W].
Prints the max abs differences; exits non-zero if any exceeds --tol (default 1e-4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZES = {"d0": 512, "d1": 640, "d2": 768, "d3": 896}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def effdet_side(work: Path, size: str, seed: int) -> None:
    """Runs in effdet's environment: imports effdet and torch only."""
    import numpy as np
    import torch
    from effdet import create_model
    from effdet.anchors import Anchors

    torch.manual_seed(seed)
    model = create_model(f"tf_efficientdet_{size}", pretrained=False, pretrained_backbone=False)
    images = torch.from_numpy(np.load(work / "images.npy"))
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("edge_weights"):
                p.copy_(torch.rand(p.shape, generator=g) * 1.6 - 0.3)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
        model.train()
        model(x)
    model.eval()
    torch.save(model.state_dict(), work / "effdet.pth")
    with torch.no_grad():
        cls, box = model(x)
    anchors = Anchors.from_config(model.config).boxes  # yxyx
    torch.save({"cls": cls, "box": box, "anchors": anchors}, work / "effdet_out.pt")


def letterboxed_images(data: Path, count: int, size: int):
    import numpy as np

    sys.path.insert(0, str(REPO))
    from detforge.data.image_io import read_image
    from detforge.infer.preprocess import fit_image

    paths = sorted((data / "JPEGImages").glob("*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"{data / 'JPEGImages'}: no .jpg images found")
    arrays = [fit_image(read_image(p), size, "letterbox")[0] for p in paths]
    # contiguous NCHW, as the file read back on the effdet side is: a channels-last view would send
    # the convolutions down another kernel whose rounding differs
    batch = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    return batch, [p.name for p in paths]


def compare(size: str, args) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from detforge.models.zoo import build_model, get_spec

    imgsz = IMAGE_SIZES[size]
    images, names = letterboxed_images(Path(args.data), args.images, imgsz)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "images.npy", images)
        subprocess.run([args.effdet_python, __file__, "--side", "effdet", "--work", str(work), "--size", size,
                        "--seed", str(args.seed)], check=True)
        ref = torch.load(work / "effdet_out.pt", weights_only=True)
        model = build_model(f"efficientdet-{size}", num_classes=90)
        report = get_spec(f"efficientdet-{size}").load_weights(model, work / "effdet.pth")
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    row = {"size": size, "imgsz": imgsz, "images": names, "loaded": len(report["loaded"]),
           "missing": len(report["missing"]), "unexpected": len(report["unexpected"])}
    for key in ("cls", "box"):
        diffs, scale = [], []
        for mine, theirs in zip(out[key], ref[key]):
            b, _, h, w = theirs.shape
            mine = mine.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            diffs.append((mine - theirs).abs().max().item())
            scale.append(theirs.abs().max().item())
        row[f"{key}_max_abs_diff"] = max(diffs)
        row[f"{key}_max_abs_value"] = max(scale)
    anchors = torch.cat(out["anchors"])[:, [1, 0, 3, 2]]  # -> yxyx
    row["anchor_max_abs_diff_px"] = (anchors - ref["anchors"]).abs().max().item()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=["detforge", "effdet"], default="detforge")
    ap.add_argument("--effdet-python", default="/work/venvs/effdet/bin/python")
    ap.add_argument("--sizes", default="d0,d1,d2,d3")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--data", default="/work/shared/datasets/bccd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--work")
    ap.add_argument("--size")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if args.side == "effdet":
        effdet_side(Path(args.work), args.size, args.seed)
        return
    rows = [compare(s.strip(), args) for s in args.sizes.split(",")]
    print("| size | input | images | tensors loaded | class max abs diff (max |value|) | box max abs diff (max |value|) | anchors max diff (px) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['imgsz']} | {len(r['images'])} | {r['loaded']} | {r['cls_max_abs_diff']:.2e} "
              f"({r['cls_max_abs_value']:.1f}) | {r['box_max_abs_diff']:.2e} ({r['box_max_abs_value']:.1f}) | "
              f"{r['anchor_max_abs_diff_px']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    worst = max(max(r["cls_max_abs_diff"], r["box_max_abs_diff"]) for r in rows)
    if worst > args.tol or any(r["missing"] or r["unexpected"] for r in rows):
        raise SystemExit(f"parity FAILED: max abs difference {worst:.3e} > {args.tol:g} or tensors missing/unexpected")
    print(f"parity OK: max abs difference {worst:.3e} <= {args.tol:g}")


if __name__ == "__main__":
    main()
