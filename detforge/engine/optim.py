"""Optimizer construction: parameter groups, the ``auto`` choice, lr scaling, LARS / LAMB.

Parameter groups
    Weight decay is applied only to weights of rank >= 2 that do not belong to a normalisation
    layer: every bias, every 1-D tensor and every parameter of a BatchNorm / GroupNorm /
    LayerNorm (or any other ``_NormBase``) goes to a ``no_decay`` group. Parameters whose names
    start with one of ``model.backbone_prefixes`` (default ``("backbone.",)``) go to
    ``backbone_*`` groups whose lr is ``lr0 * backbone_lr_mult``; the other groups' lr is
    ``lr0 * head_lr_mult``, so both stay tied to lr0 when a user changes it. Each group carries ``name``,
    ``lr_mult`` and ``initial_lr`` (the lr the schedule multiplies).

Learning-rate scaling (``lr_scale``)
    ``lr0`` is the lr at ``nominal_batch`` images per optimizer step. The global batch is
    ``per-device batch x world_size x accumulate``; ``linear`` multiplies lr0 by
    ``global / nominal_batch`` (Goyal et al. 2017), ``sqrt`` by its square root (Krizhevsky
    2014, the usual rule for Adam-type optimizers), ``none`` leaves lr0 as given.

LARS / LAMB (timm's implementations)
    timm adapts a group (multiplies its update by the layer-wise trust ratio) when the group's
    ``weight_decay != 0`` or its ``always_adapt`` is set. Adapted groups therefore get
    ``always_adapt=True`` (so they stay adapted even with weight_decay=0) and excluded groups
    (biases, norms) get ``weight_decay=0, always_adapt=False``: they take the plain momentum-SGD
    (LARS) or Adam (LAMB) step. ``adapt_all=True`` adapts and decays every group. LAMB's own
    global gradient clipping is switched off (``max_grad_norm=None``): it would clip each ZeRO
    shard by its own norm; the trainer clips outside with ``clip_grad``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from detforge.config import TrainConfig
from detforge.engine.ema import unwrap_model

LOG = logging.getLogger("detforge")

# default lr0 / weight decay when neither the user nor the model family's recipe sets one
DEFAULT_LR = {
    "sgd": 0.01, "adam": 1e-3, "adamw": 1e-3, "nadam": 1e-3, "radam": 1e-3,
    "rmsprop": 1e-3, "lars": 1e-3, "lamb": 1e-3,
}
DEFAULT_WEIGHT_DECAY = {
    "sgd": 5e-4, "adam": 5e-4, "nadam": 5e-4, "radam": 5e-4, "rmsprop": 5e-4,
    "adamw": 1e-2, "lamb": 1e-2, "lars": 1e-4,
}
# Ultralytics' rule: a run longer than this many nominal-batch steps gets SGD, a short one AdamW
AUTO_SGD_MIN_ITERATIONS = 10_000

def _pick(cfg: TrainConfig, recipe: dict[str, Any], key: str, fallback: Any = None) -> Any:
    """The user's value if set, else the family defaults', else the config default / fallback."""
    value = getattr(cfg, key)
    if key in cfg.model_fields_set and value is not None:
        return value
    if recipe.get(key) is not None:
        return recipe[key]
    return value if value is not None else fallback


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that must not be weight-decayed: norms, biases, all 1-D tensors."""
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    rms_norm = getattr(nn, "RMSNorm", None)
    if rms_norm is not None:
        norm_types = norm_types + (rms_norm,)
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        is_norm = isinstance(module, norm_types)
        for p_name, p in module.named_parameters(recurse=False):
            if is_norm or p_name == "bias" or p.ndim <= 1:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(
    model: nn.Module, lr0: float, weight_decay: float, backbone_lr_mult: float = 1.0,
    head_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Split trainable parameters into decay / no-decay x backbone / rest groups (empty ones dropped)."""
    net = unwrap_model(model)
    prefixes = tuple(getattr(net, "backbone_prefixes", ("backbone.",)))
    no_decay = _no_decay_names(net)
    buckets: dict[str, list[nn.Parameter]] = {
        "backbone_decay": [], "backbone_no_decay": [], "decay": [], "no_decay": [],
    }
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone_" if name.startswith(prefixes) else ""
        buckets[part + ("no_decay" if name in no_decay else "decay")].append(p)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        mult = backbone_lr_mult if name.startswith("backbone_") else head_lr_mult
        groups.append({
            "name": name,
            "params": params,
            "lr": lr0 * mult,
            "initial_lr": lr0 * mult,
            "lr_mult": mult,
            "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay,
        })
    if not groups:
        raise ValueError(f"{type(net).__name__} has no trainable parameters (all requires_grad=False)")
    return groups


def _auto_choice(
    cfg: TrainConfig, recipe: dict[str, Any], model: nn.Module, iterations: int
) -> tuple[str, float | None, str]:
    """(optimizer, lr or None to use lr0/recipe, reason) for optimizer=auto."""
    family_opt = recipe.get("optimizer")
    if family_opt and family_opt != "auto":
        return family_opt, None, f"the model family's recipe uses {family_opt}"
    if iterations > AUTO_SGD_MIN_ITERATIONS:
        return "sgd", 0.01, f"long schedule ({iterations} nominal-batch steps > {AUTO_SGD_MIN_ITERATIONS}): SGD lr 0.01"
    nc = getattr(unwrap_model(model), "num_classes", None) or cfg.num_classes
    if not nc:
        raise ValueError("optimizer=auto needs the class count (model.num_classes or num_classes=) to pick an lr")
    lr = round(0.002 * 5 / (4 + nc), 6)  # Ultralytics' fit over class counts
    return "adamw", lr, (
        f"short schedule ({iterations} nominal-batch steps <= {AUTO_SGD_MIN_ITERATIONS}): "
        f"AdamW with lr {lr:g} for {nc} classes"
    )


def lr_scale_factor(rule: str, global_batch: int, nominal_batch: int) -> float:
    if rule == "linear":
        return global_batch / nominal_batch
    if rule == "sqrt":
        return math.sqrt(global_batch / nominal_batch)
    if rule == "none":
        return 1.0
    raise ValueError(f"lr_scale={rule!r}: allowed values are linear, sqrt, none")


# optimizers that keep a second-moment average (their betas are (momentum, beta2))
ADAM_FAMILY = ("adam", "adamw", "nadam", "radam", "lamb")


def _make(
    name: str, groups: list[dict[str, Any]], lr: float, momentum: float, weight_decay: float, cfg: TrainConfig
) -> torch.optim.Optimizer:
    betas = (momentum, cfg.beta2)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "nadam":
        return torch.optim.NAdam(groups, lr=lr, betas=betas)
    if name == "radam":
        return torch.optim.RAdam(groups, lr=lr, betas=betas)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)
    if name in ("lars", "lamb"):
        for g in groups:
            adapt = cfg.adapt_all or not g["name"].endswith("no_decay")
            g["always_adapt"] = adapt
            g["weight_decay"] = weight_decay if adapt else 0.0
        if name == "lars":
            from timm.optim import Lars

            return Lars(groups, lr=lr, momentum=momentum, trust_coeff=cfg.lars_trust_coef, trust_clip=False)
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=betas, max_grad_norm=None, trust_clip=False)
    raise ValueError(f"optimizer={name!r}: allowed values are {', '.join(DEFAULT_LR)}, auto")


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    *,
    dataset_size: int,
    iters_per_epoch: int,
    world_size: int = 1,
    recipe: dict | None = None,
    batch_size: int | None = None,
    sources: dict[str, str] | None = None,
) -> tuple[torch.optim.Optimizer, dict]:
    """Build the optimizer for ``model`` and a dict describing the choice for the log.

    ``recipe`` holds the model family's defaults (keys optimizer, lr0, weight_decay,
    backbone_lr_mult, head_lr_mult, momentum); they fill what the user left unset. ``batch_size`` is the
    per-device batch (default ``cfg.batch``); ``iters_per_epoch`` counts optimizer steps.
    ``sources`` says where each of ``cfg``'s values came from (``ResolvedConfig.sources``: a
    resolved config carries every key, so only they tell a choice from a default); without
    them, the keys set on ``cfg`` count as chosen in the config.
    """

    def origin(key: str) -> str | None:
        """Where ``key``'s value was chosen, or None for TrainConfig's default."""
        if sources is None:
            return "the config" if key in cfg.model_fields_set else None
        return sources.get(key)

    recipe = dict(recipe or {})
    per_device = batch_size if batch_size is not None else cfg.batch
    if per_device < 1 or not float(per_device).is_integer():
        raise ValueError(f"batch={per_device}: resolve auto/fractional batch to an image count before building the optimizer")
    global_batch = int(per_device) * world_size * cfg.accumulate
    # Ultralytics counts the schedule in steps of at least the nominal batch
    iterations = math.ceil(dataset_size / max(global_batch, cfg.nominal_batch)) * cfg.epochs

    name = cfg.optimizer if "optimizer" in cfg.model_fields_set else (recipe.get("optimizer") or cfg.optimizer)
    chosen_by = origin("optimizer")
    if chosen_by:
        reason = "optimizer set in the config" if chosen_by == "the config" else f"optimizer from {chosen_by}"
    else:
        reason = "optimizer from the model family's recipe" if recipe.get("optimizer") else "default optimizer"
    auto_lr = None
    if name == "auto":
        name, auto_lr, reason = _auto_choice(cfg, recipe, model, iterations)
        if cfg.lr0 is not None and auto_lr is not None:
            reason += f"; lr0={cfg.lr0:g} from {origin('lr0') or 'the config'} replaces it"
            auto_lr = None
    if name not in DEFAULT_LR:
        raise ValueError(f"optimizer={name!r}: allowed values are {', '.join(DEFAULT_LR)}, auto")

    base_lr = auto_lr if auto_lr is not None else _pick(cfg, recipe, "lr0", DEFAULT_LR[name])
    weight_decay = _pick(cfg, recipe, "weight_decay", DEFAULT_WEIGHT_DECAY[name])
    momentum = _pick(cfg, recipe, "momentum")
    backbone_mult = _pick(cfg, recipe, "backbone_lr_mult", 1.0)
    head_mult = _pick(cfg, recipe, "head_lr_mult", 1.0)
    scale = lr_scale_factor(cfg.lr_scale, global_batch, cfg.nominal_batch)
    lr0 = base_lr * scale

    if name not in ("lars", "lamb") and origin("adapt_all") and cfg.adapt_all:
        LOG.warning("adapt_all=true (%s) applies to lars/lamb only; %s ignores it", origin("adapt_all"), name)
    if name != "lars" and origin("lars_trust_coef"):
        LOG.warning("lars_trust_coef=%g (%s) applies to lars only; %s ignores it",
                    cfg.lars_trust_coef, origin("lars_trust_coef"), name)
    groups = param_groups(model, lr0, weight_decay, backbone_mult, head_mult)
    optimizer = _make(name, groups, lr0, momentum, weight_decay, cfg)

    group_info = [
        {
            "name": g["name"],
            "tensors": len(g["params"]),
            "params": sum(p.numel() for p in g["params"]),
            "lr": g["initial_lr"],
            "weight_decay": g["weight_decay"],
            **({"adapt": g["always_adapt"]} if "always_adapt" in g else {}),
        }
        for g in optimizer.param_groups
    ]
    info = {
        "name": name,
        "reason": reason,
        "lr0": lr0,
        "base_lr": base_lr,
        "lr_scale": cfg.lr_scale,
        "lr_scale_factor": scale,
        "global_batch": global_batch,
        "nominal_batch": cfg.nominal_batch,
        "weight_decay": weight_decay,
        "momentum": momentum,
        **({"beta2": cfg.beta2} if name in ADAM_FAMILY else {}),
        "backbone_lr_mult": backbone_mult,
        "head_lr_mult": head_mult,
        "iters_per_epoch": iters_per_epoch,
        "nominal_iterations": iterations,
        "groups": group_info,
    }
    if name == "lars":
        info["trust_coef"] = cfg.lars_trust_coef
    if name in ("lars", "lamb"):
        info["adapt_all"] = cfg.adapt_all
    scale_txt = f" (= {base_lr:.3g} x {scale:.3g}, {cfg.lr_scale} scaling, global batch {global_batch})" if scale != 1 else ""
    info["summary"] = (
        f"{name} lr0={lr0:.4g}{scale_txt} momentum={momentum}"
        + (f" beta2={cfg.beta2:g}" if name in ADAM_FAMILY else "")
        + f" weight_decay={weight_decay:g} ({reason}); groups: "
        + ", ".join(f"{g['name']} {g['tensors']} tensors/{g['params']} params lr {g['lr']:.3g} wd {g['weight_decay']:g}"
                    for g in group_info)
    )
    LOG.info("optimizer: %s", info["summary"])
    return optimizer, info
