"""Model names -> constructors. Families register themselves when their module is imported."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from detforge.models.base import DetectionModel


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    build: Callable[..., DetectionModel]  # build(num_classes=..., **kw)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


def _load_families() -> None:
    # imported here, not at module top, so zoo stays a leaf the families can import
    import importlib

    for mod in ("detforge.models.dfine", "detforge.models.fcos"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a family not written yet must not break the others
            if e.name != mod:
                raise


def available() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


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
