"""What the engine passes to YOLOv3 before the model exists: constructor options from the
resolved config, and the anchor check / fit on the training boxes (``ModelSpec.prepare``)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from detforge.models.yolov3.anchors import (
    BPR_WARN,
    MIN_BOX_PX,
    anchor_report,
    as_anchor_array,
    best_possible_recall,
    default_anchors,
    fit_anchors,
    train_box_sizes,
)

LOG = logging.getLogger("detforge")


def yolov3_options(cfg: Any) -> dict[str, Any]:
    """Constructor keyword arguments from the config: ``label_smoothing``, ``asff``, ``imgsz``
    (default anchors scale with it) and an explicit ``anchors`` list. With ``anchors=auto`` the
    fitted anchors come from ``prepare`` when training starts; a model loaded from a checkpoint
    gets the anchors it was trained with from its ``anchors`` buffer."""
    options: dict[str, Any] = {
        "label_smoothing": float(getattr(cfg, "label_smoothing", 0.0)),
        "asff": bool(getattr(cfg, "asff", False)),
        "imgsz": int(getattr(cfg, "imgsz", 416)),
    }
    anchors = getattr(cfg, "anchors", "default")
    if isinstance(anchors, (list, tuple)):
        options["anchors"] = [float(v) for v in anchors]
    return options


def prepare_anchors(cfg: Any, train_samples: Sequence[Any], num_anchors: int) -> dict[str, Any]:
    """Log how well the anchors in use fit the training boxes (best possible recall, mean best
    IoU); with ``anchors=auto`` fit new ones and return them as a constructor option."""
    imgsz = int(getattr(cfg, "imgsz", 416))
    mode = getattr(cfg, "anchors", "default")
    wh = train_box_sizes(train_samples, getattr(cfg, "resize_mode", "stretch"))
    wh_px = wh * imgsz
    wh_px = wh_px[(wh_px >= MIN_BOX_PX).all(1)]
    if isinstance(mode, (list, tuple)):
        current, source = as_anchor_array(mode, num_anchors), "anchors from the config"
    else:
        current, source = default_anchors(num_anchors, imgsz), f"default anchors at imgsz={imgsz}"
    if len(wh_px) == 0:
        LOG.warning("anchors: no training boxes of at least %g px at imgsz=%d to check the anchors against", MIN_BOX_PX, imgsz)
        return {}
    LOG.info("anchors: %s: %s", source, anchor_report(wh_px, current))
    if mode == "auto":
        fitted = fit_anchors(wh, num_anchors, imgsz)
        LOG.info("anchors=auto: k-means (1 - IoU) on the train boxes at imgsz=%d -> %s; %s", imgsz,
                 ", ".join(f"{w:.0f}x{h:.0f}" for w, h in fitted), anchor_report(wh_px, fitted))
        return {"anchors": [float(v) for v in np.asarray(fitted).reshape(-1)]}
    if best_possible_recall(wh_px, current) < BPR_WARN:
        LOG.warning("anchors: best possible recall below %.2f; anchors=auto fits anchors to this data", BPR_WARN)
    return {}
