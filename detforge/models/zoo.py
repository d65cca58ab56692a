"""Model names -> family descriptors. Families register themselves when their module is imported.

A ``ModelSpec`` holds everything the engine needs to know about a model *before* it is built,
so the configuration can be resolved once, with no family names in the engine:

- ``build(num_classes=..., **options)``: the constructor;
- ``defaults(epochs, pretrained)``: the family defaults, its training settings as TrainConfig keys
  (run sizes such as imgsz / batch / epochs are never in it);
- ``options(cfg)``: the constructor keyword arguments the family takes from the resolved
  config (loss settings, anchors, ASFF, ...);
- ``load_weights(model, path)``: the family's own reader for foreign weight files given as
  ``pretrained=PATH`` (official checkpoints, Darknet .weights, ...); ``None`` means the generic
  name-and-shape matching of detforge/engine checkpoints;
- ``published``: named published weights (``pretrained=NAME``), filled by the weights hub;
- ``detr``: the family reads the DETR-only keys (``mal``, ``o2m``, ``dn_queries``...); the
  trainer warns when they are set for any other;
- ``prepare(cfg, train_samples)``: optional; called once when training starts from a model
  name (not from a checkpoint, whose model already holds what it was trained with), after the
  data is read and before the model is built, with the train split's ``Sample`` records. It
  returns constructor keyword arguments that are merged over ``options(cfg)``: settings that
  depend on the data, e.g. anchors fitted to the training boxes (``anchors=auto``).
- ``data_defaults(train_samples, pretrained, epochs)``: optional; training settings the family
  chooses from the train split's ``Sample`` records and the run's length, as ``(TrainConfig
  keys, reason)``; called at the same point as ``prepare``. They form a layer just above the
  family defaults (a key the user, recipe= or a resumed run set wins; engine/resolve.py),
  recorded in config.yaml with the reason.

What the engine needs from a *built* model (stride, loss grouping for logs, backbone prefixes,
post-processing, export forward) is on ``DetectionModel`` (models/base.py).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from detforge.models.base import DetectionModel


def no_defaults(epochs: int, pretrained: bool = False) -> dict[str, Any]:
    return {}


def default_options(cfg: Any) -> dict[str, Any]:
    """Every family's constructor takes ``label_smoothing``."""
    return {"label_smoothing": float(getattr(cfg, "label_smoothing", 0.0))}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    build: Callable[..., DetectionModel]  # build(num_classes=..., **options)
    description: str = ""
    defaults: Callable[[int, bool], dict[str, Any]] = no_defaults
    options: Callable[[Any], dict[str, Any]] = default_options
    load_weights: Callable[[DetectionModel, str], Any] | None = None
    published: dict[str, Any] = field(default_factory=dict)
    prepare: Callable[[Any, list], dict[str, Any]] | None = None
    data_defaults: Callable[[list, bool, int], tuple[dict[str, Any], str]] | None = None
    detr: bool = False  # reads the DETR-only training keys (config.DETR_KEYS)


_REGISTRY: dict[str, ModelSpec] = {}
FAMILY_MODULES = (
    "detforge.models.dfine",
    "detforge.models.fcos",
    "detforge.models.yolov3",
    "detforge.models.efficientdet",
    "detforge.models.rcnn",
)


def register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


def _load_families() -> None:
    # imported here, not at module top, so zoo stays a leaf the families can import
    import importlib

    for mod in FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family not written yet must not break the others
            if e.name != mod:
                raise


def available() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def detr_families() -> list[str]:
    """The families that read the DETR-only training keys (``ModelSpec.detr``)."""
    _load_families()
    return sorted({spec.family for spec in _REGISTRY.values() if spec.detr})


def get_spec(name: str) -> ModelSpec:
    _load_families()
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model '{name}'{hint} Known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build_model(name: str, num_classes: int, **kwargs) -> DetectionModel:
    model = get_spec(name).build(num_classes=num_classes, **kwargs)
    model.model_name = name.lower()
    return model
