"""Trust-ratio ("local LR") logging for LARS / LAMB, as in CoolDet's Figure 1 (seed 004).

Call ``maybe_log(step)`` after the gradients are unscaled (and clipped) and before
``optimizer.step()``: it recomputes, from the same tensors, the layer-wise factor timm's
optimizer is about to multiply each update by:

- LARS: ``trust_coef * ||w|| / (||g|| + weight_decay * ||w|| + eps)``
  (with LARC ``trust_clip``: ``min(ratio / lr, 1)``);
- LAMB: ``||w|| / ||u||`` where ``u`` is the bias-corrected Adam direction after this step's
  moment update plus ``weight_decay * w`` (``trust_clip``: ``min(ratio, 1)``);
- both: 1.0 when ``||w||`` or the denominator norm is 0, and for parameters of groups the
  optimizer does not adapt (``weight_decay == 0`` and not ``always_adapt``: biases and norms
  unless ``adapt_all``).

Rows go to a CSV (``step, group_or_layer, trust_ratio``): one per parameter tensor (its name)
and one per module group holding the mean over that group's adapted tensors (the excluded
ones are fixed at 1 and would only flatten the curve). The groups are the model's own
``module_groups`` when it declares them (a two-stage detector: ``group/backbone``,
``group/fpn``, ``group/rpn``, ``group/roi_box_head``, ``group/roi_mask_head``, the modules of
CoolDet's figures), else ``group/backbone``, ``group/encoder``, ``group/decoder``,
``group/head``, ``group/other`` by name. With a TensorBoard writer the
same values go to ``trust_ratio/group/<g>`` and ``trust_ratio/layer/<name>``.

Under FSDP2 the parameters are DTensors and their norms are collectives: call ``maybe_log`` on
every rank and pass ``write=False`` on all but rank 0. Under ZeRO-1 a rank holds the LAMB
moments of its own shard only; other shards' tensors are skipped (and counted in the log).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detforge.engine.ema import unwrap_model

LOG = logging.getLogger("detforge")

CSV_HEADER = ("step", "group_or_layer", "trust_ratio")
GROUP_PREFIX = "group/"


def module_group(name: str, backbone_prefixes: tuple[str, ...] = ("backbone.",),
                 declared: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> str:
    """The log group of a parameter: the first of the model's ``module_groups`` (``declared``)
    with a prefix of ``name`` ("other" if none), or, for a model that declares none,
    backbone / encoder / decoder / head / other from the name."""
    if declared:
        return next((group for group, prefixes in declared if name.startswith(tuple(prefixes))), "other")
    if name.startswith(backbone_prefixes):
        return "backbone"
    first = name.split(".", 1)[0].lower()
    if "backbone" in first:
        return "backbone"
    if "encoder" in first or first in ("neck", "fpn"):  # a CNN's neck plays the DETR encoder's part
        return "encoder"
    if "decoder" in first:
        return "decoder"
    if "head" in first:  # head, heads, rpn_head, roi_heads, bbox_head ...
        return "head"
    return "other"


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32, so half-precision tensors do not overflow the norms."""
    t = t.detach()
    return t if t.dtype == torch.float64 else t.float()


def _norm(t: torch.Tensor) -> torch.Tensor:
    n = torch.linalg.vector_norm(_wide(t))
    full = getattr(n, "full_tensor", None)  # DTensor (FSDP2): reduce the shards
    return full() if full is not None else n


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    one = torch.ones_like(num)
    return torch.where(num > 0, torch.where(den > 0, num / den, one), one)


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> tuple[str, torch.optim.Optimizer]:
    from timm.optim import Lamb, Lars

    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps the local one in .optim
    if isinstance(inner, Lars):
        return "lars", inner
    if isinstance(inner, Lamb):
        return "lamb", inner
    raise ValueError(f"trust ratios are defined for LARS and LAMB only, got {type(inner).__name__}")


class TrustRatioLogger:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        every: int,
        out_csv: Path,
        tb_writer: Any = None,
        *,
        write: bool = True,
    ) -> None:
        if every < 1:
            raise ValueError(f"trust_ratio_every must be >= 1 to log, got {every}")
        self.kind, self.inner = _optimizer_kind(optimizer)
        self.optimizer = optimizer
        self.every = int(every)
        self.out_csv = Path(out_csv)
        self.tb_writer = tb_writer
        self.write = write
        net = unwrap_model(model)
        prefixes = tuple(getattr(net, "backbone_prefixes", ("backbone.",)))
        declared = tuple(getattr(net, "module_groups", ()) or ())
        self.names = {id(p): n for n, p in net.named_parameters()}
        self.groups = {n: module_group(n, prefixes, declared) for n in self.names.values()}
        self._skipped_warned = False

    # ------------------------------------------------------------------ ratios
    def _inner_groups(self) -> dict[int, dict[str, Any]]:
        return {id(p): g for g in self.inner.param_groups for p in g["params"]}

    def _lamb_ratio(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], inner_group: dict[str, Any],
                    clip: torch.Tensor | None) -> torch.Tensor:
        beta1, beta2 = group["betas"]
        beta3 = 1.0 - beta1 if group.get("grad_averaging", True) else 1.0
        step = float(inner_group.get("step", 0)) + 1.0  # the step about to be taken
        bc1 = 1.0 - beta1 ** step if group.get("bias_correction", True) else 1.0
        bc2 = 1.0 - beta2 ** step if group.get("bias_correction", True) else 1.0
        g = _wide(grad)
        if clip is not None:
            g = g / clip
        state = self.inner.state.get(p, {})
        m = _wide(state["exp_avg"]) * beta1 if "exp_avg" in state else torch.zeros_like(g)
        v = _wide(state["exp_avg_sq"]) * beta2 if "exp_avg_sq" in state else torch.zeros_like(g)
        m = m + beta3 * g
        v = v + (1.0 - beta2) * g * g
        update = (m / bc1) / (v.sqrt() / bc2 ** 0.5 + group["eps"])
        wd = group["weight_decay"]
        if wd != 0 and not group.get("decoupled_decay", False):
            update = update + wd * _wide(p)
        ratio = _safe_ratio(_norm(p), _norm(update))
        return ratio.clamp(max=1.0) if group.get("trust_clip", False) else ratio

    def _lars_ratio(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        w, g = _norm(p), _norm(grad)
        ratio = _safe_ratio(group["trust_coeff"] * w, g + group["weight_decay"] * w + group["eps"])
        ratio = torch.where(g > 0, ratio, torch.ones_like(ratio))
        return (ratio / group["lr"]).clamp(max=1.0) if group.get("trust_clip", False) else ratio

    def _lamb_clip(self) -> torch.Tensor | None:
        """LAMB's own global-norm clip divisor, when the optimizer was built with one."""
        max_norm = self.inner.defaults.get("max_grad_norm")
        grads = [p.grad for g in self.inner.param_groups for p in g["params"] if p.grad is not None]
        if max_norm is None or not grads:
            return None
        total = torch.linalg.vector_norm(torch.stack([_norm(gr) for gr in grads]))
        return (total / max_norm).clamp(min=1.0)

    @torch.no_grad()
    def compute(self) -> dict[str, tuple[float, bool]]:
        """{parameter name: (trust ratio, adapted)} for every parameter that has a gradient."""
        inner_groups = self._inner_groups()
        clip = self._lamb_clip() if self.kind == "lamb" else None
        names, adapted, ratios = [], [], []
        skipped = 0
        for gi, group in enumerate(self.optimizer.param_groups):
            adapt = group["weight_decay"] != 0 or bool(group.get("always_adapt", False))
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                name = self.names.get(id(p), f"param_group{gi}.{pi}")
                if not adapt:
                    ratio = torch.ones((), device=p.device)
                elif self.kind == "lars":
                    ratio = self._lars_ratio(p, p.grad, group)
                else:
                    inner_group = inner_groups.get(id(p))
                    has_state = p in self.inner.state
                    if inner_group is None or (not has_state and float(inner_group.get("step", 0)) > 0):
                        skipped += 1  # moments held by another ZeRO rank
                        continue
                    ratio = self._lamb_ratio(p, p.grad, group, inner_group, clip)
                names.append(name)
                adapted.append(adapt)
                ratios.append(ratio.reshape(()).to("cpu", torch.float64))
        if skipped and not self._skipped_warned:
            LOG.warning("trust ratios: %d LAMB tensors skipped (their optimizer state lives on other ranks)", skipped)
            self._skipped_warned = True
        values = torch.stack(ratios).tolist() if ratios else []
        return {n: (v, a) for n, v, a in zip(names, values, adapted)}

    def group_means(self, ratios: dict[str, tuple[float, bool]]) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for name, (value, adapted) in ratios.items():
            if adapted:
                sums.setdefault(self.groups.get(name, module_group(name)), []).append(value)
        return {g: sum(v) / len(v) for g, v in sorted(sums.items())}

    # ------------------------------------------------------------------ output
    def maybe_log(self, step: int) -> dict[str, float] | None:
        """Compute and record the ratios when ``step`` is a multiple of ``every``; returns the group means."""
        if step % self.every:
            return None
        ratios = self.compute()
        means = self.group_means(ratios)
        if not self.write:
            return means
        rows = [(step, GROUP_PREFIX + g, v) for g, v in means.items()]
        rows += [(step, name, v) for name, (v, _) in ratios.items()]
        new_file = not self.out_csv.exists() or self.out_csv.stat().st_size == 0
        self.out_csv.parent.mkdir(parents=True, exist_ok=True)
        with self.out_csv.open("a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(CSV_HEADER)
            writer.writerows((s, n, f"{v:.6g}") for s, n, v in rows)
        if self.tb_writer is not None:
            for g, v in means.items():
                self.tb_writer.add_scalar(f"trust_ratio/group/{g}", v, step)
            for name, (v, _) in ratios.items():
                self.tb_writer.add_scalar(f"trust_ratio/layer/{name}", v, step)
        return means


def read_trust_ratios(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{group_or_layer: (steps, ratios)} from a trust_ratio.csv."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trust-ratio CSV here")
    series: dict[str, tuple[list[int], list[float]]] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != CSV_HEADER:
            raise ValueError(f"{path}: expected the header {','.join(CSV_HEADER)}, found {header}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 3:
                raise ValueError(f"{path}:{lineno}: expected 3 columns, found {len(row)}: {row}")
            try:
                step, value = int(row[0]), float(row[2])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: step must be an integer and trust_ratio a number: {row}") from None
            steps, values = series.setdefault(row[1], ([], []))
            steps.append(step)
            values.append(value)
    return series


def plot_trust_ratios(csv_path: Path, out_png: Path) -> Path:
    """Mean trust ratio ("local LR") of each module group against the step, log y (CoolDet Figure 1)."""
    from matplotlib.figure import Figure

    series = read_trust_ratios(csv_path)
    groups = {k[len(GROUP_PREFIX):]: v for k, v in series.items() if k.startswith(GROUP_PREFIX)}
    if not groups:
        raise ValueError(f"{csv_path}: no '{GROUP_PREFIX}*' rows to plot (no adapted parameters were logged)")
    fig = Figure(figsize=(7, 4.5), tight_layout=True)
    ax = fig.add_subplot()
    for group, (steps, values) in sorted(groups.items()):
        ax.plot(steps, values, marker="o", markersize=2.5, linewidth=1.2, label=group)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean trust ratio (local LR)")
    ax.set_title("Layer-wise trust ratio by module group")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
