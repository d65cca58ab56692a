"""EfficientDet's training settings as TrainConfig keys: the official recipe (Tan et al. 2020;
the TensorFlow automl defaults that NVIDIA's EfficientDet-D0 also trains with): SGD with
momentum 0.9, lr 0.08 for a global batch of 64 scaled linearly with the batch (0.02 at batch
16), one epoch of linear warm-up then cosine decay to zero, weight decay 4e-5, gradient-norm
clip 10, EMA of the weights with decay 0.9998, mixed precision on GPU.

The recipe's sizes (512-896 px, 300 epochs, batch 64-128) are the user's to choose and are never
filled in here. Small custom sets: the trainer caps the warm-up at 10% of a short run, and the
EMA's decay ramp (``ema_warmup``) keeps a 0.9998 average from lagging a run of a few hundred
steps; nothing else is changed from the official values.
"""

from __future__ import annotations

from typing import Any


def recipe(epochs: int, pretrained: bool = False) -> dict[str, Any]:
    return {
        "optimizer": "sgd",
        "lr0": 0.08,
        "lr_scale": "linear",
        "nominal_batch": 64,
        "lrf": 0.0,
        "momentum": 0.9,
        "weight_decay": 4e-5,
        "scheduler": "cosine",
        "warmup_epochs": 1.0,
        "clip_grad": 10.0,
        "ema": True,
        "ema_decay": 0.9998,
        "amp": True,
    }
