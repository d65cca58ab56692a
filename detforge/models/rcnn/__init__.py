"""Two-stage detectors: torchvision's Faster R-CNN (R50-FPN v2, MobileNetV3-Large FPN) and
Mask R-CNN (R50-FPN v2), wrapped behind ``DetectionModel`` (see ``model.py``)."""

from __future__ import annotations

import logging
from typing import Any

from detforge.models.rcnn.model import ARCHS, MODULE_GROUPS, TorchvisionRCNN, build_rcnn
from detforge.models.rcnn.recipe import rcnn_recipe
from detforge.models.rcnn.weights import load_torchvision_weights
from detforge.models.zoo import ModelSpec, register

LOG = logging.getLogger("detforge")


def _options(cfg: Any) -> dict[str, Any]:
    """Constructor settings from the config: the detections kept per image (``max_det`` when
    the user set it, else torchvision's 100)."""
    opts: dict[str, Any] = {}
    if "max_det" in getattr(cfg, "model_fields_set", set()):
        opts["detections_per_img"] = int(cfg.max_det)
    if float(getattr(cfg, "label_smoothing", 0.0) or 0.0) > 0:
        LOG.warning("label_smoothing=%g: torchvision's R-CNN losses have no label smoothing; ignored",
                    cfg.label_smoothing)
    return opts


for _name, _arch in ARCHS.items():
    register(ModelSpec(
        name=_name,
        family="rcnn",
        build=build_rcnn(_name),
        description=_arch.description,
        defaults=rcnn_recipe,
        options=_options,
        load_weights=load_torchvision_weights,
    ))

__all__ = ["ARCHS", "MODULE_GROUPS", "TorchvisionRCNN", "build_rcnn", "load_torchvision_weights", "rcnn_recipe"]
