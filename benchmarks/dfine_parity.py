"""Output parity of detforge's D-FINE with the official implementation.

    python benchmarks/dfine_parity.py --official /path/to/D-FINE --size n [--image IMG.jpg]

Builds the official model from its own source and config (configs/dfine/dfine_hgnetv2_{size}_coco.yml,
one size per process: the official config registry keeps settings between builds in one process),
builds detforge's model of the same size, gives the official model random weights (every tensor
perturbed, so zero-initialised heads and BatchNorm statistics matter too), copies its state dict
into detforge's by name, and compares:
  - eval mode: pred_logits and pred_boxes on a random 640x640 input (and on IMG, resized to 640);
  - training mode without denoising: every tensor of the training output dict (main, auxiliary,
    pre-layer and encoder outputs), which is what the loss consumes;
  - deploy form: detforge's deploy() against the official deploy() (backbone unfused on both
    sides), and detforge's backbone fold against its unfused backbone (relative to feature size).
Prints the max abs differences; exits non-zero if any exceeds --tol (default 1e-4). Random
weights can tie encoder scores exactly; tied queries may then come out in another order, which is
reported and the outputs compared after pairing the queries.
The official code is only read from --official; nothing of it is part of detforge.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_official(root: Path, size: str) -> torch.nn.Module:
    sys.path.insert(0, str(root))
    # profiling library imported by the official package at import time; the model never uses it
    if "calflops" not in sys.modules:
        try:
            import calflops  # noqa: F401
        except ImportError:
            stub = types.ModuleType("calflops")
            stub.calculate_flops = None
            sys.modules["calflops"] = stub
    cwd = os.getcwd()
    os.chdir(root)  # the official configs include each other by relative path
    try:
        from src.core import YAMLConfig

        cfg = YAMLConfig(f"configs/dfine/dfine_hgnetv2_{size}_coco.yml", HGNetv2={"pretrained": False})
        return cfg.model
    finally:
        os.chdir(cwd)


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Perturb every weight, then set the BatchNorm statistics from a few random batches, so
    activations stay in a realistic range (random statistics make many queries tie exactly,
    and the order of tied queries is arbitrary in any implementation)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith(("up", "reg_scale")):
            continue  # FDR constants
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    for name, b in model.named_buffers():
        if name.endswith(("weight", "bias")):  # FrozenBatchNorm2d affine
            b.add_(torch.randn(b.shape, generator=g) * 0.02)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    denoising = model.decoder.num_denoising
    model.decoder.num_denoising = 0
    for _ in range(2):
        model(torch.rand(2, 3, 640, 640, generator=g))
    model.decoder.num_denoising = denoising
    for m in norms:
        m.momentum = 0.1


def flatten_outputs(out, prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    if isinstance(out, torch.Tensor):
        flat[prefix] = out
    elif isinstance(out, dict):
        for k, v in out.items():
            flat.update(flatten_outputs(v, f"{prefix}.{k}" if prefix else k))
    elif isinstance(out, (list, tuple)):
        for i, v in enumerate(out):
            flat.update(flatten_outputs(v, f"{prefix}.{i}"))
    return flat


def max_diff(a: dict, b: dict) -> tuple[float, str]:
    worst, where = 0.0, ""
    for k in a:
        if k not in b:
            raise SystemExit(f"output '{k}' missing in detforge's outputs")
        if a[k].shape != b[k].shape:
            raise SystemExit(f"output '{k}': shape {tuple(a[k].shape)} (official) vs {tuple(b[k].shape)} (detforge)")
        d = (a[k].float() - b[k].float()).abs().max().item() if a[k].numel() else 0.0
        if d > worst:
            worst, where = d, k
    return worst, where


def pair_queries(a: dict, b: dict) -> tuple[dict, int]:
    """Reorder detforge's queries to best match the official ones (Hungarian matching on the final
    logits and boxes, per image). Random weights can give encoder cells exactly tied scores, and
    the order in which top-k returns tied entries is arbitrary, so equal outputs may come as a
    permutation. Returns the reordered outputs and how many queries moved."""
    from scipy.optimize import linear_sum_assignment

    fa = torch.cat([a["pred_logits"], a["pred_boxes"]], -1).double()
    fb = torch.cat([b["pred_logits"], b["pred_boxes"]], -1).double()
    perms, moved = [], 0
    for i in range(fa.shape[0]):
        cost = (fa[i][:, None, :] - fb[i][None, :, :]).abs().amax(-1)
        rows, cols = linear_sum_assignment(cost.numpy())
        perm = torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]
        moved += int((perm != torch.arange(len(perm))).sum())
        perms.append(perm)
    num_queries = fa.shape[1]
    out = {}
    for k, v in b.items():
        if v.dim() >= 2 and v.shape[1] == num_queries and v.shape[0] == len(perms):
            v = torch.stack([v[i, perms[i]] for i in range(len(perms))])
        out[k] = v
    return out, moved


def compare(label: str, a, b, tol: float) -> bool:
    """Print the ordered max abs difference of every output tensor and, when queries come out
    permuted, the difference after pairing them; True when within ``tol``."""
    a, b = flatten_outputs(a), flatten_outputs(b)
    d, where = max_diff(a, b)
    line = f"{label:44s} {len(a):2d} tensors  max abs diff {d:.3e} ({where})"
    if d >= tol:
        b, moved = pair_queries(a, b)
        d, where = max_diff(a, b)
        line += f"; {moved} tied queries reordered, then {d:.3e} ({where})"
    print(line)
    return d < tol


def load_image(path: Path) -> torch.Tensor:
    from detforge.data.image_io import read_image

    img = read_image(path)  # HWC uint8 RGB
    t = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
    return torch.nn.functional.interpolate(t, size=(640, 640), mode="bilinear", align_corners=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, type=Path, help="root of the official D-FINE source")
    ap.add_argument("--size", default="n", choices=list("nsmlx"))
    ap.add_argument("--image", type=Path, help="optional real image, resized to 640x640")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.official / "src" / "zoo" / "dfine").is_dir():
        raise SystemExit(f"{args.official}: not the official D-FINE source (src/zoo/dfine missing)")

    from detforge.models.dfine import DFine

    torch.manual_seed(args.seed)
    official = build_official(args.official, args.size)
    randomise(official, args.seed)
    # detforge's L/X use FrozenBatchNorm2d like the official ones when starting from official weights
    ours = DFine(args.size, num_classes=80, freeze_norm=args.size in ("l", "x"))
    result = ours.load_state_dict(official.state_dict(), strict=True)
    print(f"D-FINE-{args.size.upper()}: state dict loaded by name, strict ({result})")
    n_off = sum(p.numel() for p in official.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    print(f"parameters: official {n_off:,}  detforge {n_ours:,}")

    inputs = {"random 640x640": torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(args.seed))}
    if args.image:
        inputs[f"image {args.image.name}"] = load_image(args.image)

    failures = 0
    official.eval()
    ours.eval()
    for label, x in inputs.items():
        with torch.no_grad():
            failures += not compare(f"eval   {label}", official(x), ours(x), args.tol)

    # training-mode outputs (no denoising: its noise draws differ by design)
    off_train, ours_train = copy.deepcopy(official).train(), copy.deepcopy(ours).train()
    off_train.decoder.num_denoising = 0
    ours_train.decoder.num_denoising = 0
    x = inputs["random 640x640"].repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    with torch.no_grad():
        failures += not compare("train  random 640x640, batch 2", off_train(x), ours_train(x), args.tol)

    # deploy forms: the official one leaves the backbone as it is, so the strict comparison does
    # too; detforge's backbone fold (norms and affine blocks into the convs) changes float
    # rounding, which these random weights (features up to ~1e4 for M) would amplify, so it
    # is checked on the backbone features, relative to their size
    off_dep = copy.deepcopy(official).deploy()
    ours_dep = copy.deepcopy(ours).deploy(fuse_backbone=False)
    with torch.no_grad():
        x = inputs["random 640x640"]
        failures += not compare("deploy random 640x640", off_dep(x), ours_dep(x), args.tol)
        folded = copy.deepcopy(ours).eval()
        folded.backbone.fuse()
        rel = max(float((a - b).abs().max() / a.abs().max())
                  for a, b in zip(ours.eval().backbone(x), folded.backbone(x)))
        folded64 = copy.deepcopy(ours).eval().double()
        unfused64 = copy.deepcopy(folded64)
        folded64.backbone.fuse()
        rel64 = max(float((a - b).abs().max() / a.abs().max())
                    for a, b in zip(unfused64.backbone(x.double()), folded64.backbone(x.double())))
    # float32 rounding through ~40 convs of strongly perturbed weights; float64 shows the fold exact
    print(f"deploy backbone fold: max diff of the backbone features {rel:.3e} of their largest value "
          f"(float64: {rel64:.1e})")
    failures += rel >= args.tol or rel64 >= 1e-12
    print("PASS" if not failures else f"FAIL: {failures} comparisons at or above {args.tol}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
