"""FCOS-style anchor-free CNN detectors, sizes n / s / m."""

from detforge.models.fcos.model import FCOS, SIZES, build_fcos
from detforge.models.zoo import ModelSpec, register

_DESCRIPTIONS = {
    "n": "FCOS-n: CSP backbone + PAN + shared FCOS head, ATSS targets (~1.7M params)",
    "s": "FCOS-s: wider CSP backbone + PAN + FCOS head (~6.7M params)",
    "m": "FCOS-m: wider and deeper CSP backbone + PAN + 3-conv FCOS head (~17.6M params)",
}

for _size in SIZES:
    register(ModelSpec(name=f"fcos-{_size}", family="fcos", build=build_fcos(_size), description=_DESCRIPTIONS[_size],
                       defaults=lambda epochs, pretrained=False: FCOS.recipe()))

__all__ = ["FCOS", "SIZES", "build_fcos"]
