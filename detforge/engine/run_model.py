"""The run's model: the settings its training data chooses (a config layer, engine/resolve.py)
and the model itself, built from a model name, a detforge checkpoint to fine-tune, or the
checkpoint of the run being resumed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from detforge.config import TrainConfig, detr_keys_set
from detforge.engine.checkpoint import (
    build_with_weights,
    load_matching,
    load_pretrained,
    read_detforge_checkpoint,
    read_model_record,
)
from detforge.engine.resolve import ResolvedConfig, apply_data_layer
from detforge.models.zoo import build_model, detr_families, get_spec

LOG = logging.getLogger("detforge")


@dataclass
class RunModel:
    model: torch.nn.Module
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # what a checkpoint reader rebuilds it with
    prepared: dict[str, Any] = field(default_factory=dict)  # options the family's prepare() chose from the data


def apply_data_defaults(resolved: ResolvedConfig, train_samples: list, model_given: bool = False
                        ) -> tuple[ResolvedConfig, dict[str, Any]]:
    """``resolved`` with the family's settings for this training set, and the keys they set.
    Chosen only when training starts from a model name: a resumed run keeps what it was saved
    with, and a checkpoint or a model object brings its own."""
    cfg = resolved.cfg
    if model_given or resolved.resume_from is not None or cfg.model.endswith(".pt"):
        return resolved, {}
    spec = get_spec(cfg.model)
    if spec.data_defaults is None:
        return resolved, {}
    values, reason = spec.data_defaults(train_samples, bool(cfg.pretrained), cfg.epochs)
    out = apply_data_layer(resolved, reason, values)
    return out, {k: getattr(out.cfg, k) for k in values if out.sources.get(k) == reason}


def build_run_model(cfg: TrainConfig, num_classes: int, train_samples: list, model_in: torch.nn.Module | None = None,
                    resumed: dict[str, Any] | None = None, warn: bool = True) -> RunModel:
    """The model to train. ``resumed``: the resumed run's checkpoint, whose recorded options
    (fitted anchors, loss settings) rebuild the model as it was trained. ``warn``: say which
    DETR-only keys a non-DETR model ignores."""
    spec = None  # a model object handed in has no spec to check the keys against
    options: dict[str, Any] = {}
    prepared: dict[str, Any] = {}
    if model_in is not None:
        model = model_in
    elif cfg.model.endswith(".pt"):  # fine-tune a detforge checkpoint (new head if classes differ)
        ckpt = read_detforge_checkpoint(cfg.model)
        record = read_model_record(ckpt)
        spec = get_spec(record.model_name)
        options = {**record.model_options, **spec.options(cfg)}
        model = build_model(record.model_name, num_classes, **options)
        load_matching(model, ckpt["model"], source=cfg.model)
        if cfg.pretrained:
            load_pretrained(model, cfg.pretrained)
    else:
        spec = get_spec(cfg.model)
        if resumed is not None:
            options = {**spec.options(cfg), **read_model_record(resumed).model_options}
        else:
            # data-dependent options (e.g. anchors fitted to the training boxes) over the config's
            prepared = spec.prepare(cfg, train_samples) if spec.prepare is not None else {}
            options = {**spec.options(cfg), **prepared}
        model = build_with_weights(cfg.model, num_classes, cfg.pretrained, **options)
    ignored = [] if spec is None or spec.detr else detr_keys_set(cfg)
    if ignored and warn:
        LOG.warning("%s is not a DETR: ignoring %s (keys read only by the DETR families: %s)", spec.name,
                    ", ".join(f"{k}={getattr(cfg, k)}" for k in ignored), ", ".join(detr_families()))
    return RunModel(model, getattr(model, "model_name", cfg.model), options, prepared)
