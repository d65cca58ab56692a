"""YOLOv3's default training settings: the "bag of freebies" of Zhang et al. 2019 (arXiv
1902.04103), which took YOLOv3 from 33.0 to 37.0 COCO AP with training changes alone, sized
for the small custom sets detforge is used on, from scratch. Every key can be overridden.

- ``optimizer=adamw lr0=1e-3 weight_decay=5e-4``: the YOLOv3 papers train with SGD
  (momentum 0.9, weight decay 5e-4). Measured here, AdamW learns faster from scratch on small
  sets: yolov3-tiny on BCCD (224 px, batch 16, 10 epochs, this recipe otherwise) reached
  0.058 mAP50-95 / 0.188 mAP50 with AdamW 1e-3 against 0.011 / 0.059 with SGD lr 0.01,
  momentum 0.9, weight decay 5e-4; overfitting 8 images for 60 steps left a loss of 0.0107
  (AdamW 1e-3) against 0.0208 (SGD 0.01) and 0.0218 (SGD 0.1); SGD 0.5 diverged.
  ``optimizer=sgd lr0=0.01`` gives the papers' optimizer back.
- ``momentum=0.9``: Adam's beta1 here, the papers' SGD momentum with ``optimizer=sgd``.
- ``warmup_epochs=3`` (the trainer caps a default warm-up at 10 % of the run): Darknet burns
  in for 1000 iterations; a linear warm-up keeps the first steps from blowing up exp(t_w)
  box sizes and BatchNorm statistics. ``warmup_bias_lr=0``: one ramp for all parameters.
- ``scheduler=cosine lrf=0.01``: the paper's cosine schedule, which it found better than the
  step schedule; it also needs no milestones tuned to the run length.
- ``clip_grad=10``: a guard for the first steps of exp()-parameterised box regression.
- ``mixup=0.5 mixup_mode=geometry``: the paper's geometry-preserving mixup: both images at
  their own size on one canvas, blend ratio ~ Beta(1.5, 1.5), each box's loss weighted by its
  image's ratio; on half the samples, so the other half show objects unblended. It slows the
  first epochs: in a 15-epoch yolov3-tiny run on BCCD (256 px, 2 seeds) ``mixup=0`` ended at
  0.195 mAP50-95 / 0.472 mAP50 against the recipe's 0.185 / 0.484, within the seed spread
  (benchmarks/RESULTS.md, "Seed 001's ablation in small"); for very short runs ``mixup=0``.
- ``label_smoothing=0.01``: the paper's smoothing of class targets (1 - eps for the true class,
  eps / (K - 1) for the others; seed 001 names it without a value). Light: with sigmoid classes
  and few classes a larger eps caps every score well below 1.
- ``multi_scale=0.25``: YOLOv3 trains at a new random size every few batches (Darknet's
  ``random=1``, 320-608 px for a 416 px network); here each batch is drawn within +/-25 % of
  imgsz, in multiples of 32.
- ``sync_bn=true``: the paper's synchronized BatchNorm. It acts only under torchrun on CUDA,
  where each GPU holds a few images and per-GPU statistics are noisy; a single process or a CPU
  run keeps plain BatchNorm (the trainer leaves it alone there).
- ``close_mosaic`` = 15 % of the epochs: mosaic (detforge's default, a stronger form of the
  paper's random crop/expand) and mixup stop for the last epochs, as the paper stops mixup,
  so the model ends on images like the ones it will see.
- ``pretrained=`` (Darknet COCO weights): ``backbone_lr_mult=0.1`` keeps the pretrained
  Darknet features from being overwritten at the from-scratch lr while the new head adapts.
"""

from __future__ import annotations

from typing import Any

CLOSE_MOSAIC_FRACTION = 0.15


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
        "close_mosaic": max(1, round(CLOSE_MOSAIC_FRACTION * epochs)),
    }
    if pretrained:
        recipe["backbone_lr_mult"] = 0.1
    return recipe
