"""Published training recipes, chosen with ``recipe=NAME``: a layer of settings between a
model family's defaults and the user's own (see detforge/engine/resolve.py). ``recipe=default``
adds nothing."""

from __future__ import annotations

from typing import Any

# recipe=cooldet reproduces the best run of the CoolDet repository (Syamsudin & Kistijantoro,
# "CoolDet: Cooling-down in Training Adaptive Rate Large Batch for Object Detection", seed 004):
# LARS with trust coefficient 1 adapting and decaying all parameters, lr 8e-4 at global batch 64
# (scaled linearly from nominal batch 64), momentum 0.9, weight decay 1e-4, one warm-up epoch
# then cosine annealing stepped per epoch, SyncBN and fp16 AMP. That repository reports 38.7
# bbox AP with torchvision's Mask R-CNN R50-FPN v2, 10 epochs on 8 GPUs; its warm-restart
# (SGDR) runs were its worst (26-28 AP).
TRAINING_RECIPES: dict[str, dict[str, Any]] = {
    "cooldet": {
        "optimizer": "lars",
        "lars_trust_coef": 1.0,
        "adapt_all": True,
        "lr0": 8e-4,
        "nominal_batch": 64,
        "lr_scale": "linear",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_epochs": 1.0,
        "warmup_iters": None,
        "scheduler": "cosine",
        "step_per_epoch": True,
        "sync_bn": True,
        "amp": True,
        "amp_dtype": "float16",
    },
}
