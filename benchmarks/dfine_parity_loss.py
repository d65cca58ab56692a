"""Loss parity: detforge's D-FINE criterion against the official implementation.

    python benchmarks/dfine_parity_loss.py --official PATH/TO/D-FINE [--trials 20] [--seed 0]

PATH is a checkout of the official D-FINE repository (Apache-2.0); its criterion, matcher and
box utilities are imported from there at run time (nothing of it is copied into detforge).
Each trial builds a random training-mode output dict in the official format (decoder layers,
pre head, encoder proposals, denoising groups) and random targets, including images without
boxes and a batch without any box, runs both criteria and prints the largest per-key
difference of the loss values and of the gradients they send to the network outputs.
With --model SIZE (default n) it then repeats the comparison on the raw training outputs of
detforge's own D-FINE decoder (random weights and images), gradients taken with respect to the
weights. Exit status 1 when any difference reaches --tol.

Class-agnostic encoder proposals (enc_meta class_agnostic=True) are not compared: the reference
matches them with the original class labels against one-class logits and fails with an index
error; detforge matches them with the class-0 targets it also scores them with.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from detforge.models.dfine.criterion import DFineCriterion  # noqa: E402
from detforge.models.dfine.matcher import HungarianMatcher  # noqa: E402


def import_official(root: Path):
    """Load the official dfine criterion modules without running the package __init__ files
    (they pull in training-only dependencies): stub the two helpers they import."""
    dfine_dir = root / "src" / "zoo" / "dfine"
    if not (dfine_dir / "dfine_criterion.py").is_file():
        raise SystemExit(f"--official {root}: no src/zoo/dfine/dfine_criterion.py there")
    for name in ("src", "src.zoo", "src.misc"):
        sys.modules.setdefault(name, types.ModuleType(name)).__path__ = []
    core = types.ModuleType("src.core")
    core.register = lambda *a, **k: (lambda cls: cls)
    sys.modules["src.core"] = core
    dist_utils = types.ModuleType("src.misc.dist_utils")
    dist_utils.is_dist_available_and_initialized = lambda: (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    )
    dist_utils.get_world_size = lambda: (
        torch.distributed.get_world_size() if dist_utils.is_dist_available_and_initialized() else 1
    )
    sys.modules["src.misc.dist_utils"] = dist_utils
    package = types.ModuleType("src.zoo.dfine")
    package.__path__ = [str(dfine_dir)]
    sys.modules["src.zoo.dfine"] = package
    criterion = importlib.import_module("src.zoo.dfine.dfine_criterion")
    matcher = importlib.import_module("src.zoo.dfine.matcher")
    return criterion.DFINECriterion, matcher.HungarianMatcher


def random_boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    """cxcywh boxes inside the unit square."""
    wh = 0.02 + 0.4 * torch.rand(n, 2, generator=gen)
    centre = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=gen)
    return torch.cat([centre, wh], 1)


def build_case(num_gts: list[int], queries: int, classes: int, layers: int, reg_max: int, num_dn: int, seed: int):
    """Random leaf tensors plus a function that assembles a fresh official-format output dict
    (the official criterion adds keys to the dicts it is given, so each criterion gets its own)."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(num_gts)
    targets = []
    for n in num_gts:
        targets.append({"labels": torch.randint(0, classes, (n,), generator=gen), "boxes": random_boxes(n, gen)})
    max_gt = max(num_gts)
    groups = max(num_dn // max_gt, 1) if max_gt else 0
    dn_queries = 2 * max_gt * groups

    def near_targets(q: int) -> torch.Tensor:
        # half of the queries start near a target so matches have real IoU
        boxes = random_boxes(batch * q, gen).reshape(batch, q, 4)
        for b, t in enumerate(targets):
            if len(t["boxes"]):
                pick = torch.randint(0, len(t["boxes"]), (q // 2,), generator=gen)
                jitter = 0.05 * torch.randn(q // 2, 4, generator=gen)
                boxes[b, : q // 2] = (t["boxes"][pick] + jitter).clamp(0.01, 0.99)
        return boxes

    def leaf(x: torch.Tensor) -> torch.Tensor:
        return x.clone().requires_grad_(True)

    def group(q: int):
        ref = random_boxes(batch * q, gen).reshape(batch, q, 4)  # shared by all layers
        layer_list = [
            {
                "pred_logits": leaf(torch.randn(batch, q, classes, generator=gen) * 2),
                "pred_boxes": leaf(near_targets(q)),
                "pred_corners": leaf(torch.randn(batch, q, 4 * (reg_max + 1), generator=gen)),
                "ref_points": ref,
            }
            for _ in range(layers)
        ]
        pre = {"pred_logits": leaf(torch.randn(batch, q, classes, generator=gen)), "pred_boxes": leaf(near_targets(q))}
        return layer_list, pre

    dec, pre = group(queries)
    dn, dn_pre = group(dn_queries)
    enc = [{"pred_logits": leaf(torch.randn(batch, queries, classes, generator=gen)), "pred_boxes": leaf(near_targets(queries))}]
    positive_idx = None
    if max_gt:
        positive_idx = tuple(
            torch.cat([g * 2 * max_gt + torch.arange(n) for g in range(groups)]).long() for n in num_gts
        )
    dn_meta = {"dn_positive_idx": positive_idx, "dn_num_group": groups, "dn_num_split": [dn_queries, queries]}
    up = torch.tensor([0.5])
    reg_scale = torch.tensor([4.0])

    def with_teacher(layer_list):
        last = layer_list[-1]
        return [{**l, "teacher_corners": last["pred_corners"], "teacher_logits": last["pred_logits"]} for l in layer_list]

    def assemble() -> dict:
        out = {**dec[-1], "up": up, "reg_scale": reg_scale}
        out["aux_outputs"] = with_teacher(dec)[:-1]
        out["pre_outputs"] = dict(pre)
        out["enc_aux_outputs"] = [dict(e) for e in enc]
        out["enc_meta"] = {"class_agnostic": False}
        out["dn_outputs"] = with_teacher(dn)
        out["dn_pre_outputs"] = dict(dn_pre)
        out["dn_meta"] = dn_meta
        return out

    leaves = [t for l in dec + dn for k, t in l.items() if k != "ref_points"]
    leaves += list(pre.values()) + list(dn_pre.values()) + [t for e in enc for t in e.values()]
    return assemble, targets, leaves


def compare(official_cls, official_matcher_cls, case, classes: int, reg_max: int):
    assemble, targets, leaves = case
    official = official_cls(
        matcher=official_matcher_cls(
            weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True, alpha=0.25, gamma=2.0
        ),
        weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
        losses=["vfl", "boxes", "local"], alpha=0.75, gamma=2.0, num_classes=classes, reg_max=reg_max,
    )
    ours = DFineCriterion(num_classes=classes, reg_max=reg_max, matcher=HungarianMatcher())
    ref = official(assemble(), [dict(t) for t in targets])
    got = ours(assemble(), [dict(t) for t in targets])
    if set(ref) != set(got):
        raise SystemExit(f"key sets differ: only official {sorted(set(ref) - set(got))}, only ours {sorted(set(got) - set(ref))}")
    value_diff = {k: (ref[k].detach() - got[k].detach()).abs().max().item() for k in ref}
    grads_ref = torch.autograd.grad(sum(ref.values()), leaves, allow_unused=True)
    grads_got = torch.autograd.grad(sum(got.values()), leaves, allow_unused=True)
    grad_diff = 0.0
    for a, b in zip(grads_ref, grads_got):
        a = torch.zeros(1) if a is None else a
        b = torch.zeros(1) if b is None else b
        if a.numel() == 0 and b.numel() == 0:  # the denoising group is empty without boxes
            continue
        grad_diff = max(grad_diff, (a - b).abs().max().item())
    total = sum(v.item() for v in ref.values())
    return value_diff, grad_diff, total


def compare_on_model(official_cls, official_matcher_cls, size: str, classes: int, trials: int, seed: int):
    """The same comparison on the raw training outputs of detforge's own D-FINE decoder (its
    denoising groups and reference points), gradients taken with respect to the weights."""
    from detforge.models.dfine.model import DFine

    torch.manual_seed(seed)
    model = DFine(size, num_classes=classes).train()
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    worst_value, worst_grad = 0.0, 0.0
    for trial in range(trials):
        num_gts = [0, 0] if trial == 0 else torch.randint(0, 12, (2,), generator=gen).tolist()
        targets = [{"labels": torch.randint(0, classes, (n,), generator=gen), "boxes": random_boxes(n, gen)} for n in num_gts]
        images = torch.rand(len(num_gts), 3, 160, 160, generator=gen)
        outputs = model.decoder(model.encoder(model.backbone(images)), targets)

        def fresh(o):  # the reference adds keys to the dicts it is given
            return {k: fresh(v) for k, v in o.items()} if isinstance(o, dict) else [fresh(v) for v in o] if isinstance(o, list) else o

        official = official_cls(
            matcher=official_matcher_cls(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True),
            weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
            losses=["vfl", "boxes", "local"], alpha=0.75, gamma=2.0, num_classes=classes, reg_max=32,
        )
        ref = official(fresh(outputs), [dict(t) for t in targets])
        got = DFineCriterion(num_classes=classes)(fresh(outputs), [dict(t) for t in targets])
        if set(ref) != set(got):
            raise SystemExit(f"model outputs: key sets differ: {sorted(set(ref) ^ set(got))}")
        value = max((ref[k] - got[k]).abs().item() for k in ref)
        g_ref = torch.autograd.grad(sum(ref.values()), params, retain_graph=True, allow_unused=True)
        g_got = torch.autograd.grad(sum(got.values()), params, allow_unused=True)
        grad = max(((a if a is not None else 0) - (b if b is not None else 0)).abs().max().item()
                   for a, b in zip(g_ref, g_got) if a is not None or b is not None)
        worst_value, worst_grad = max(worst_value, value), max(worst_grad, grad)
        print(f"model dfine-{size} trial {trial} gts={num_gts}: {len(ref)} keys, total {sum(v.item() for v in ref.values()):8.4f}, "
              f"max |dloss| {value:.2e}, max |dgrad wrt weights| {grad:.2e}")
    return worst_value, worst_grad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of the official D-FINE repository")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--model", default="n", help="also compare on this detforge D-FINE size's real outputs ('' to skip)")
    parser.add_argument("--model-trials", type=int, default=3)
    args = parser.parse_args()
    official_cls, official_matcher_cls = import_official(args.official.resolve())
    reg_max, num_dn = 32, 100
    gen = torch.Generator().manual_seed(args.seed)
    worst_value: dict[str, float] = {}
    worst_grad = 0.0
    for trial in range(args.trials):
        if trial == 0:
            num_gts = [0, 0]  # a batch without a single box
        elif trial == 1:
            num_gts = [0, 5]  # a background image next to a busy one
        else:
            num_gts = torch.randint(0, 25, (2,), generator=gen).tolist()
        case = build_case(num_gts, args.queries, args.classes, args.layers, reg_max, num_dn, args.seed * 1000 + trial)
        value_diff, grad_diff, total = compare(official_cls, official_matcher_cls, case, args.classes, reg_max)
        for k, v in value_diff.items():
            worst_value[k] = max(worst_value.get(k, 0.0), v)
        worst_grad = max(worst_grad, grad_diff)
        print(f"trial {trial:2d} gts={num_gts}: total loss {total:9.4f}  max |dloss| {max(value_diff.values()):.2e}  max |dgrad| {grad_diff:.2e}")
    print(f"\nworst difference per key over {args.trials} trials ({len(worst_value)} keys):")
    for k in sorted(worst_value):
        print(f"  {k:22s} {worst_value[k]:.2e}")
    worst = max(worst_value.values())
    print(f"\nrandom outputs: max |loss difference| {worst:.2e}, max |gradient difference| {worst_grad:.2e}")
    if args.model:
        model_value, model_grad = compare_on_model(
            official_cls, official_matcher_cls, args.model, args.classes, args.model_trials, args.seed
        )
        worst, worst_grad = max(worst, model_value), max(worst_grad, model_grad)
    print(f"\noverall: max |loss difference| {worst:.2e}, max |gradient difference| {worst_grad:.2e} (tolerance {args.tol:g})")
    return 0 if worst < args.tol and worst_grad < args.tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
