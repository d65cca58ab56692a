"""EfficientDet D0-D3 (Tan et al. 2020, arXiv 1911.09070), registered as efficientdet-d0 .. -d3.
``pretrained=PATH`` reads the reference PyTorch port's (effdet) tf_efficientdet_d* files."""

from __future__ import annotations

from detforge.models.efficientdet.model import EfficientDet, build_efficientdet
from detforge.models.efficientdet.recipe import recipe
from detforge.models.efficientdet.sizes import SIZES
from detforge.models.efficientdet.weights import load_effdet
from detforge.models.zoo import ModelSpec, register

_PARAMS = {"d0": "3.9M", "d1": "6.6M", "d2": "8.1M", "d3": "12.0M"}  # 90 classes, as in the paper

for _size, _cfg in SIZES.items():
    register(ModelSpec(
        name=f"efficientdet-{_size}",
        family="efficientdet",
        build=build_efficientdet(_size),
        description=(f"EfficientDet-{_size.upper()}: {_cfg.backbone} + {_cfg.bifpn_layers}x BiFPN ({_cfg.channels} ch), "
                     f"{_cfg.image_size} px in the paper ({_PARAMS[_size]} params at 90 classes)"),
        defaults=recipe,
        load_weights=load_effdet,
    ))

__all__ = ["EfficientDet", "SIZES", "build_efficientdet", "load_effdet", "recipe"]
