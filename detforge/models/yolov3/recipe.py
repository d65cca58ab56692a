"""YOLOv3's default training settings: the "bag of freebies" of Zhang et al. 2019 (arXiv
1902.04103), sized for the small custom sets detforge is used on, trained from scratch."""

from __future__ import annotations

from typing import Any


def yolov3_recipe(epochs: int = 100, pretrained: bool = False) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "optimizer": "adamw",
        "lr0": 1e-3,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "warmup_epochs": 3.0,
        "warmup_bias_lr": 0.0,
        "scheduler": "cosine",
        "lrf": 0.01,
        "clip_grad": 10.0,
        "mixup": 0.5,
        "mixup_mode": "geometry",
        "label_smoothing": 0.01,
        "multi_scale": 0.25,
        "sync_bn": True,
        "close_mosaic": max(1, round(0.15 * epochs)),
    }
    if pretrained:
        recipe["backbone_lr_mult"] = 0.1
    return recipe
