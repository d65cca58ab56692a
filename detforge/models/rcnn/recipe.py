"""Default training settings of the R-CNN family: torchvision's detection reference recipe
(references/detection in the torchvision repository) in detforge's keys.

torchvision trains these models with SGD, momentum 0.9, weight decay 1e-4 and lr 0.02 for 16
images per step (8 GPUs x 2), i.e. 0.00125 per image, so the lr scales linearly with the
global batch here (``nominal_batch=16``, ``lr_scale=linear``); a linear warm-up; and a step
schedule dividing the lr by 10 at epochs 16 and 22 of 26 (the "2x"-style milestones as
fractions of the run). The warm-up is one epoch (torchvision's 1000 iterations are longer than
a whole run on a small set; detforge also caps a default warm-up at a tenth of the run).
"""

from __future__ import annotations

from typing import Any

TORCHVISION_MILESTONES = (16 / 26, 22 / 26)


def rcnn_recipe(epochs: int = 0, pretrained: bool = False) -> dict[str, Any]:
    return {
        "optimizer": "sgd",
        "lr0": 0.02,
        "nominal_batch": 16,
        "lr_scale": "linear",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_epochs": 1.0,
        "scheduler": "step",
        "step_milestones": [round(m, 4) for m in TORCHVISION_MILESTONES],
        "step_gamma": 0.1,
    }
