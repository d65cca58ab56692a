"""Optimizer construction: parameter groups, recipes, auto choice, lr scaling, LARS/LAMB options."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from detforge.config import TrainConfig
from detforge.engine.optim import build_optimizer, lr_scale_factor
from detforge.engine.resolve import resolve_train_config


class TinyDetector(nn.Module):
    """Backbone conv+BN, a neck with GroupNorm, a head with LayerNorm, a free 1-D query and a frozen tensor."""

    backbone_prefixes = ("backbone.",)
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.neck = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        self.query_scale = nn.Parameter(torch.ones(4))
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)


def _build(cfg: TrainConfig, model: nn.Module | None = None, **kw):
    model = model or TinyDetector()
    kw.setdefault("dataset_size", 100)
    kw.setdefault("iters_per_epoch", 7)
    return model, *build_optimizer(model, cfg, **kw)


def _groups_by_name(opt):
    return {g["name"]: g for g in opt.param_groups}


def test_param_groups_split_decay_and_backbone():
    model, opt, info = _build(TrainConfig(optimizer="sgd", lr0=0.02, weight_decay=5e-4, backbone_lr_mult=0.1, batch=8))
    groups = _groups_by_name(opt)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    bb, neck, head = model.backbone, model.neck, model.head
    assert ids["backbone_decay"] == {id(bb[0].weight)}
    assert ids["backbone_no_decay"] == {id(bb[1].weight), id(bb[1].bias)}
    assert ids["decay"] == {id(neck[0].weight), id(head[0].weight), id(head[2].weight)}
    assert ids["no_decay"] == {
        id(neck[0].bias), id(neck[1].weight), id(neck[1].bias), id(head[0].bias),
        id(head[1].weight), id(head[1].bias), id(head[2].bias), id(model.query_scale),
    }
    assert id(model.frozen) not in set().union(*ids.values())
    assert groups["backbone_decay"]["weight_decay"] == 5e-4 and groups["decay"]["weight_decay"] == 5e-4
    assert groups["backbone_no_decay"]["weight_decay"] == 0 and groups["no_decay"]["weight_decay"] == 0
    assert groups["backbone_decay"]["lr"] == pytest.approx(0.002) and groups["backbone_decay"]["lr_mult"] == 0.1
    assert groups["backbone_no_decay"]["initial_lr"] == pytest.approx(0.002)
    assert groups["decay"]["initial_lr"] == pytest.approx(0.02) and groups["decay"]["lr_mult"] == 1.0
    counts = {g["name"]: (g["tensors"], g["params"]) for g in info["groups"]}
    assert counts["backbone_decay"] == (1, 4 * 3 * 3 * 3)
    assert counts["no_decay"] == (8, 4 + 4 + 4 + 4 + 4 + 4 + 2 + 4)


@pytest.mark.parametrize("user, backbone_lr, rest_lr", [
    ({}, 3 * 8e-4, 1.5 * 8e-4),  # the family's lr0 and both multipliers
    ({"lr0": 1e-3}, 3e-3, 1.5e-3),  # a lr0 the user sets moves both groups
    ({"head_lr_mult": 1.0}, 3 * 8e-4, 8e-4),
    ({"lr0": 1e-3, "backbone_lr_mult": 1.0, "head_lr_mult": 2.0}, 1e-3, 2e-3),
])
def test_head_lr_mult_scales_everything_but_the_backbone(user, backbone_lr, rest_lr):
    recipe = {"optimizer": "adamw", "lr0": 8e-4, "backbone_lr_mult": 3.0, "head_lr_mult": 1.5}
    _, opt, info = _build(TrainConfig(batch=16, **user), recipe=recipe)
    groups = _groups_by_name(opt)
    for name in ("backbone_decay", "backbone_no_decay"):
        assert groups[name]["initial_lr"] == pytest.approx(backbone_lr)
    for name in ("decay", "no_decay"):
        assert groups[name]["initial_lr"] == pytest.approx(rest_lr)
        assert groups[name]["lr_mult"] == pytest.approx(rest_lr / info["lr0"])
    assert info["head_lr_mult"] == user.get("head_lr_mult", 1.5)


def test_wrapped_model_groups_match_unwrapped_names():
    model = TinyDetector()
    wrapped = nn.DataParallel(model)  # names gain "module."; backbone matching must still work
    _, opt, _ = _build(TrainConfig(optimizer="sgd", batch=4, backbone_lr_mult=0.5), model=wrapped)
    assert {id(p) for p in _groups_by_name(opt)["backbone_decay"]["params"]} == {id(model.backbone[0].weight)}


@pytest.mark.parametrize(
    "name, cls, check",
    [
        ("sgd", torch.optim.SGD, lambda g: g["nesterov"] and g["momentum"] == 0.8),
        ("adam", torch.optim.Adam, lambda g: g["betas"] == (0.8, 0.999)),
        ("adamw", torch.optim.AdamW, lambda g: g["betas"] == (0.8, 0.999)),
        ("nadam", torch.optim.NAdam, lambda g: g["betas"] == (0.8, 0.999)),
        ("radam", torch.optim.RAdam, lambda g: g["betas"] == (0.8, 0.999)),
        ("rmsprop", torch.optim.RMSprop, lambda g: g["momentum"] == 0.8),
    ],
)
def test_named_optimizers(name, cls, check):
    _, opt, info = _build(TrainConfig(optimizer=name, lr0=0.003, momentum=0.8, batch=4))
    assert type(opt) is cls and info["name"] == name
    assert all(check(g) for g in opt.param_groups)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.003)


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "radam", "lamb"])
def test_beta2_reaches_adam_family(name):
    _, opt, info = _build(TrainConfig(optimizer=name, lr0=0.003, momentum=0.8, beta2=0.99, batch=4))
    assert all(tuple(g["betas"]) == (0.8, 0.99) for g in opt.param_groups)
    assert info["beta2"] == 0.99 and "beta2=0.99 " in info["summary"]


def test_beta2_is_not_reported_for_sgd():
    _, _, info = _build(TrainConfig(optimizer="sgd", lr0=0.01, beta2=0.99, batch=4))
    assert "beta2" not in info and "beta2" not in info["summary"]


@pytest.mark.parametrize("rule, factor", [("linear", 2.0), ("sqrt", math.sqrt(2.0)), ("none", 1.0)])
def test_lr_scaling_uses_global_batch(rule, factor):
    # global batch = 16 per device x 4 devices x accumulate 2 = 128 = 2 x nominal 64
    cfg = TrainConfig(optimizer="sgd", lr0=0.01, lr_scale=rule, nominal_batch=64, accumulate=2, batch=16)
    _, opt, info = _build(cfg, world_size=4)
    assert info["global_batch"] == 128
    assert info["lr0"] == pytest.approx(0.01 * factor)
    assert _groups_by_name(opt)["decay"]["initial_lr"] == pytest.approx(0.01 * factor)
    assert lr_scale_factor(rule, 32, 64) == pytest.approx({"linear": 0.5, "sqrt": math.sqrt(0.5), "none": 1.0}[rule])


def test_explicit_per_device_batch_overrides_cfg_batch():
    _, _, info = _build(TrainConfig(optimizer="sgd", lr0=0.01, lr_scale="linear", batch=-1), world_size=2, batch_size=16)
    assert info["global_batch"] == 32 and info["lr0"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="batch=-1"):
        _build(TrainConfig(optimizer="sgd", batch=-1))


def test_family_recipe_fills_only_unset_values():
    recipe = {"optimizer": "adamw", "lr0": 2e-4, "weight_decay": 1e-4, "backbone_lr_mult": 0.5, "momentum": 0.85}
    _, opt, info = _build(TrainConfig(batch=4), recipe=recipe)
    groups = _groups_by_name(opt)
    assert type(opt) is torch.optim.AdamW and info["reason"] == "optimizer from the model family's recipe"
    assert groups["decay"]["initial_lr"] == pytest.approx(2e-4)
    assert groups["backbone_decay"]["initial_lr"] == pytest.approx(1e-4)
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["decay"]["betas"] == (0.85, 0.999)
    # what the user sets wins
    _, opt, _ = _build(TrainConfig(batch=4, optimizer="sgd", lr0=0.05, momentum=0.9), recipe=recipe)
    groups = _groups_by_name(opt)
    assert type(opt) is torch.optim.SGD and groups["decay"]["initial_lr"] == pytest.approx(0.05)
    assert groups["decay"]["momentum"] == 0.9 and groups["decay"]["weight_decay"] == 1e-4


def test_auto_long_schedule_picks_sgd(caplog):
    # Ultralytics' count: ceil(100000 / max(16, 64)) * 10 epochs = 15630 > 10000 steps
    with caplog.at_level(logging.INFO, logger="detforge"):
        _, opt, info = _build(TrainConfig(batch=16, epochs=10), dataset_size=100_000)
    assert type(opt) is torch.optim.SGD and info["lr0"] == pytest.approx(0.01)
    assert info["nominal_iterations"] == 15630 and "long schedule" in info["reason"]
    assert "long schedule" in caplog.text


def test_auto_short_schedule_picks_adamw_from_class_count():
    _, opt, info = _build(TrainConfig(batch=16, epochs=10), dataset_size=1000)
    assert type(opt) is torch.optim.AdamW
    assert info["lr0"] == pytest.approx(0.001429)  # round(0.002 * 5 / (4 + 3), 6)
    assert "3 classes" in info["reason"]


def test_auto_uses_detr_family_recipe():
    recipe = {"optimizer": "adamw", "lr0": 8e-4, "backbone_lr_mult": 0.5, "weight_decay": 1e-4}
    _, opt, info = _build(TrainConfig(batch=16, epochs=500, optimizer="auto"), dataset_size=100_000, recipe=recipe)
    assert type(opt) is torch.optim.AdamW and info["lr0"] == pytest.approx(8e-4)
    assert "recipe" in info["reason"]


def test_lars_excludes_biases_and_norms_by_default():
    cfg = TrainConfig(optimizer="lars", lr0=0.1, weight_decay=1e-4, lars_trust_coef=0.02, batch=4)
    _, opt, info = _build(cfg)
    from timm.optim import Lars

    assert type(opt) is Lars
    for g in opt.param_groups:
        assert g["trust_coeff"] == 0.02 and not g["trust_clip"]
        if g["name"].endswith("no_decay"):
            assert g["always_adapt"] is False and g["weight_decay"] == 0.0
        else:
            assert g["always_adapt"] is True and g["weight_decay"] == 1e-4
    assert info["trust_coef"] == 0.02 and info["adapt_all"] is False


def test_resolved_config_reports_where_the_optimizer_came_from(caplog):
    # a resolved config (rebuilt from a dump, as the data-defaults layer does) sets every key:
    # only its sources tell a choice from a default
    resolved = resolve_train_config({"model": "dfine-n", "batch": 4})
    cfg = TrainConfig(**resolved.cfg.model_dump())
    assert {"optimizer", "lars_trust_coef"} <= cfg.model_fields_set
    with caplog.at_level(logging.WARNING, logger="detforge"):
        _, opt, info = _build(cfg, recipe=resolved.family_defaults, sources=resolved.sources)
    assert type(opt) is torch.optim.AdamW
    assert info["reason"] == "optimizer from dfine family defaults"
    assert "applies to lars only" not in caplog.text and "applies to lars/lamb only" not in caplog.text
    # the user's own optimizer, and a LARS coefficient it would ignore: both named with their source
    resolved = resolve_train_config({"model": "dfine-n", "batch": 4, "optimizer": "sgd", "lars_trust_coef": 0.02})
    with caplog.at_level(logging.WARNING, logger="detforge"):
        _, opt, info = _build(resolved.cfg, recipe=resolved.family_defaults, sources=resolved.sources)
    assert type(opt) is torch.optim.SGD and info["reason"] == "optimizer from key=value"
    assert "lars_trust_coef=0.02 (key=value) applies to lars only; sgd ignores it" in caplog.text
    # without sources the keys set on the config count as chosen there
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detforge"):
        _, _, info = _build(TrainConfig(optimizer="adamw", lars_trust_coef=0.02, batch=4))
    assert info["reason"] == "optimizer set in the config"
    assert "lars_trust_coef=0.02 (the config) applies to lars only; adamw ignores it" in caplog.text


def test_adapt_all_adapts_and_decays_everything():
    _, opt, _ = _build(TrainConfig(optimizer="lamb", lr0=1e-3, weight_decay=0.01, adapt_all=True, batch=4))
    from timm.optim import Lamb

    assert type(opt) is Lamb and opt.defaults["max_grad_norm"] is None
    assert all(g["always_adapt"] and g["weight_decay"] == 0.01 for g in opt.param_groups)


def test_lars_adapts_weights_even_with_zero_weight_decay():
    _, opt, _ = _build(TrainConfig(optimizer="lars", weight_decay=0.0, batch=4))
    decay = _groups_by_name(opt)["decay"]
    assert decay["weight_decay"] == 0.0 and decay["always_adapt"] is True


def test_cooldet_recipe_fields_and_lr():
    cfg = resolve_train_config({"model": "fcos-n", "recipe": "cooldet", "batch": 8}).cfg
    assert (cfg.optimizer, cfg.lars_trust_coef, cfg.adapt_all, cfg.lr0) == ("lars", 1.0, True, 8e-4)
    assert (cfg.nominal_batch, cfg.lr_scale, cfg.momentum, cfg.weight_decay) == (64, "linear", 0.9, 1e-4)
    assert (cfg.warmup_epochs, cfg.warmup_iters, cfg.scheduler) == (1.0, None, "cosine")
    assert (cfg.sync_bn, cfg.amp, cfg.amp_dtype, cfg.step_per_epoch) == (True, True, "float16", True)
    # 8 per GPU x 8 GPUs = 64: exactly the paper's lr; 16 GPUs -> linear scaling doubles it
    _, opt, info = _build(cfg, world_size=8)
    assert info["lr0"] == pytest.approx(8e-4) and all(g["trust_coeff"] == 1.0 for g in opt.param_groups)
    _, _, info = _build(cfg, world_size=16)
    assert info["lr0"] == pytest.approx(1.6e-3)


def test_recipe_keeps_user_fields_and_default_adds_nothing():
    resolved = resolve_train_config({"model": "fcos-n", "recipe": "cooldet", "lr0": 1e-3, "warmup_iters": 100})
    assert resolved.cfg.lr0 == 1e-3 and resolved.sources["lr0"] == "key=value"
    assert resolved.cfg.warmup_iters == 100 and resolved.cfg.optimizer == "lars"
    assert resolved.sources["optimizer"] == "recipe=cooldet"
    plain = resolve_train_config({"model": "fcos-n"})
    assert not any(src.startswith("recipe") for src in plain.sources.values())


def test_unknown_optimizer_from_recipe_is_refused():
    with pytest.raises(ValueError, match="optimizer='adagrad'"):
        _build(TrainConfig(batch=4), recipe={"optimizer": "adagrad"})
