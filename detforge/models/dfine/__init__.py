"""D-FINE (Peng et al., arXiv 2410.13842) in sizes N/S/M/L/X, registered as dfine-n .. dfine-x."""

from __future__ import annotations

from functools import partial

from detforge.models.dfine.model import DFine
from detforge.models.dfine.sizes import SIZES, official_recipe
from detforge.models.dfine.weights import load_official
from detforge.models.zoo import ModelSpec, register

_BACKBONES = {"n": "HGNetv2-B0, 2 levels", "s": "HGNetv2-B0", "m": "HGNetv2-B2", "l": "HGNetv2-B4", "x": "HGNetv2-B5"}

for _size in SIZES:
    register(ModelSpec(
        name=f"dfine-{_size}",
        family="dfine",
        build=partial(DFine, _size),
        description=f"D-FINE-{_size.upper()} ({_BACKBONES[_size]}); NMS-free real-time DETR",
    ))

__all__ = ["DFine", "SIZES", "load_official", "official_recipe"]
