"""detforge's default D-FINE recipe: the official one, changed where a few hundred images need it.

The official configs are tuned for COCO on 8 GPUs (118k images, batch 32-128, 72-220 epochs,
500 warm-up steps, ImageNet-pretrained backbones). On a custom set of a few hundred images
trained from scratch, the official code with its D-FINE-N custom recipe stayed at ~0 mAP for 5
epochs and ended at 0.231 / 0.492 mAP50-95 / mAP50 on BCCD val (416 px, batch 16, 25 epochs,
CPU), below YOLO11n's 0.361 / 0.578 at the same budget. This module says what changes, why, and
the figure behind each choice; every figure is at 416 px, batch 16, 25 epochs from scratch on a
CPU unless it says otherwise, and benchmarks/RESULTS.md has the commands, the per-epoch curves
and the section named in brackets.

What changes for every set
--------------------------
- Dense one-to-one supervision (DEIM, arXiv 2412.04234): mosaic 0.5 and MixUp 0.2 raise the
  objects per training image, so Hungarian matching hands out more positives per step without
  an extra decoder; both stop for the last ~15% of the epochs (``close_mosaic``) so the run ends
  on images that look like the validation data.
- Matchability-aware loss (DEIM's MAL) instead of VFL, with the exponent 1.0 from scratch
  (DEIM's 1.5 for official weights, under which they were trained): a low-IoU match keeps a
  real positive target, and a wrong class is pushed down with weight p rather than p**1.5, so
  the score that picks the encoder's proposals learns sooner. 3 seeds each: BCCD 0.501 ± 0.007
  / 0.787 against 0.450 ± 0.028 / 0.690 at 1.5; the 1-2-object synthetic set 0.105 / 0.227
  against 0.063 / 0.147, every seed higher; BCCD-WBC 0.769 against 0.782, a little lower ("MAL's
  exponent 1.0 over three seeds"). VFL ended at 0.096 and 0.038 on two synthetic seeds.
- ``conf`` 0.25: MAL scores aim at IoU**gamma, below VFL's; at 0.5 the BCCD screen's F1 was
  0.000 after 5 epochs, 0.343 at 0.25 with the same mAP.
- The backbone at the full lr from scratch: the official multipliers (0.5 for N down to 0.01
  for X) protect ImageNet features a random backbone does not have. Official weights keep them.
- Cosine decay to 10% instead of the official constant lr: a short run has no later epochs in
  which a constant-lr model settles.
- A warm-up of 2 epochs, capped at 10% of the run, instead of 500 steps (a whole 25-epoch run
  on 200 images at batch 16 is 325 steps).
- EMA ramp sized to the run (``ema_warmup=auto``: the final average spans ~15% of the steps)
  instead of 1000 steps, which never averages in a 325-step run. BCCD-WBC, 3 seeds: 0.782 ±
  0.010 against 0.782 ± 0.006 with a 300-step ramp, the last 5 epochs moving 0.013 against
  0.038; BCCD 0.004-0.009 lower per seed, the cost of averaging a still-climbing model ("EMA
  ramp sized to the run").

In a paired 5-epoch screen on BCCD (256 px, batch 8, one seed, all changes at once) these left
the ~0 plateau an epoch earlier and ended at 0.154 / 0.403 against the official recipe's 0.123
/ 0.339 ("D-FINE on BCCD"); at the full budget D-FINE-N ends at 0.43-0.50 mAP50-95 on BCCD
across seeds and machines.

Sparse objects
--------------
With one object per image a DETR gets about one positive query per image and step, and the
class score, which also picks the encoder's proposals, learns slowest. When the training images
average at most ``SPARSE_OBJECTS_PER_IMAGE`` (2) labelled objects, from scratch, the family
sets (``sparse_data_defaults``, a config layer just above the family defaults, recorded in
config.yaml; any key the user sets wins):

- ``cls_weight`` 2: BCCD-WBC 0.769 ± 0.004 / 0.999 against 0.769 / 0.994, synthetic 0.109 /
  0.244 against 0.105 / 0.227 (3 seeds); on BCCD it cost ~0.013 in every seed, hence sparse
  only ("twice the classification weight").
- ``warmup_epochs`` 0 and ``mosaic`` 1.0: level at the end and sooner at the start (epoch-8
  mAP50 0.097 against 0.068 on the synthetic set, 0.882 against 0.656 on BCCD-WBC; "no lr
  warm-up"); on BCCD mosaic on every image cost seed 0 0.019.
- No colour jitter (``hsv_*`` 0): four-class synthetic level (5 seeds), one-class 0.284 against
  0.262 (5 seeds), BCCD-WBC higher in every seed (0.782 against 0.766), with starts as soon or
  sooner ("no colour jitter at the full budget"). Jitter varies the contrast at the outline the
  class is read from.
- ``backbone_lr_mult`` 3 (2.4e-3 for N): four classes 0.184 ± 0.017 / 0.325 against 0.113 /
  0.226, one class 0.332 / 0.657 against 0.272 / 0.569 (5 seeds, 400 extra validation images,
  every seed higher); BCCD-WBC 0.006 lower ("the backbone at three times the lr over three
  seeds"). Five times was lower.
- ``precise_bn`` 256: the BatchNorm statistics are re-measured on up to 256 un-augmented
  training images before each validation. With mosaic on every image and a fast backbone the
  running averages trail the weights and sound models read ~0 (BCCD-WBC seed 0, epoch 4: 0.002
  as saved, 0.508 re-measured). Epoch-8 mAP50 rose to 0.112 from 0.083 (four classes) and to
  0.314 from 0.245 (one class); the training is unchanged ("BatchNorm statistics re-measured").

Small sparse objects
--------------------
When the median object side is also under ``SMALL_OBJECT_SIDE`` (a tenth of the image's long
side; BCCD's platelets 0.06, its white cells 0.30, the synthetic shapes 0.22), as measured on
BCCD-Platelets (1.8 objects per image, ~26 px; 5 or 3 seeds, each paired with the settings
before it; "BCCD-Platelets"):

- ``copy_blend`` 1.0 (DEIMv2's Copy-Blend: objects of another image blended in): at 0.5 mAP50
  rose to YOLO11n's (0.858 against 0.832) and the seeds and last epochs evened out; every image
  instead of half, 5 seeds: 0.454 ± 0.010 / 0.910 ± 0.015 against 0.452 / 0.899, every seed's
  last 5 epochs within 0.02. On the large-object proxies it was level with a larger late swing.
- ``scale`` 0.1 (0.9-1.1 instead of 0.5-1.5): at 0.5 a 26 px platelet trains at 13-39 px, a
  quarter of the time under one cell of the finest map; 0.25 gave +0.026 and 0.1 another
  +0.009, the gain at IoU 0.55-0.75 where the boxes had been loose. No jitter was lower.
- ``head_lr_mult`` 1.5 (``SMALL_SPARSE_LR_MULT``; 1.2e-3 for N beside the backbone's 2.4e-3):
  0.449 ± 0.011 against 0.433, AP up at IoU 0.65-0.80; twice was lower. On the large-object
  synthetic sets (two seeds each) it started no sooner, ended level or higher (four classes
  0.249 against 0.210) and climbed harder to the end: exits later in three runs of four, last 5
  epochs moving 0.035-0.080 ("all but the backbone at 1.5 times the lr"). It stays a
  small-object setting.
- ``close_mosaic`` a quarter of the epochs (``SMALL_SPARSE_NO_AUG_FRACTION``; 6 of 25): those
  runs gained in every plain epoch; level accuracy, the last 5 epochs moving 0.019 against
  0.035 (4 seeds). On the four-class synthetic set it ended lower (0.233 against 0.243).

Against YOLO11n on BCCD-Platelets (5 seeds a side, scored by one evaluator): 0.454 ± 0.010 /
0.910 ± 0.015 against 0.418 ± 0.032 / 0.849 ± 0.031 mAP50-95 / mAP50, exits at epochs 1-3 of 25
(YOLO11n 15-18). That is Ultralytics' default, stepping every 4 batches at batch 16; stepping
every batch (``nbs=16``, 3 seeds) YOLO11n ends level, 0.464 / 0.907, its exit at epochs 14-16
and its last 5 epochs moving 0.08-0.15 ("YOLO11n with an optimizer step every batch").

Where it stands, and what was left out
--------------------------------------
BCCD-WBC (one large cell per image) ends at 0.782 ± 0.002 / 0.998 against YOLO11n's 0.733 /
0.999, past half its final mAP50 at epoch 1. The synthetic sets end far above YOLO11n (four
classes about 0.22 against 0.013 mAP50-95, one class 0.35 against 0.059) but still climb to
the last epoch: half the final comes at epochs 9-11 on four classes and 8-10 on one, and the
last 5 epochs move 0.017-0.070, in every whole run the rise along a fitted line to within
0.002 (``detforge bench stability``'s ``last5_rise``; "Synthetic-sparse, one and four
classes: whole runs"), not scatter. Neither a longer plain tail nor a minimum-lr tail
(``lrf=0.01 lr_tail_epochs=5``: swing 0.008, end 0.054 against 0.085) nor a decay to 1 %
(``lrf=0.01``, two seeds: swing 0.005 and 0.018, end 0.141 against 0.210) gave a flat end
without a lower one. The run length is what is short: 25 epochs at batch 16 on 160 images are
250 optimizer steps. Batch 8 (same images, same CPU time, twice the steps; three seeds a set)
ended 0.058 (four classes) and 0.102 (one class) higher, mostly still climbing. 50 epochs
ended at 0.607 ± 0.028 against 0.349 on one class and 0.530 ± 0.061 against 0.221 on four
(three seeds each, last-5 swings 0.014-0.028), the exit at the same share of the run or later
("twice the optimizer steps"); YOLO11n at 50 epochs ended at 0.231 on one class and 0.126 on
four, its exit at epochs 24-37 of 50, its last 5 epochs moving as much ("both at 50 epochs").
Batch and epochs are the user's run sizes, so the recipe leaves them alone; ``detforge
train`` ends a run still climbing with a hint naming both.

On BCCD in full at equal optimizer steps (YOLO11n stepping every batch, ``nbs=16``, 0.561 ±
0.003 over three seeds against 0.501 ± 0.007) D-FINE-N trails on the platelets and red cells,
level on the white cells. Three errors make the gap: duplicate boxes a DETR without NMS has not
yet learned to score down (class-wise NMS over its saved predictions, as a diagnostic, adds
about 0.03 mAP50), boxes looser past IoU 0.6 (its finest map has stride 16, YOLO11n's 8), and
confident boxes on red cells the annotations leave unlabelled ("BCCD in full at equal steps").

Measured and left out (switches stay; the figures are paired with the default of their day):
``o2m=6`` (H-DETR's one-to-many group: +0.017 ± 0.033, swing 0.035, no sooner start),
``enc_o2m=6`` (-0.009 over 3 seeds), ``dense_cls=1`` (level), ``open_mosaic=4`` (-0.015),
``mosaic_zoom=0.5`` (later start: objects at half their validation scale), ``o2m`` with
``copy_blend`` (0.055 against 0.099 and 0.100 alone), ``dn_queries=300`` (+0.002 for ~40%
more time per epoch), ``dn_queries=0``, ``dn_box_noise=0.4``, ``dn_label_noise=1.0``,
``dn_label_drop=1.0`` (sooner at epoch 8, lower at the end), ``cls_weight=4``, ``class_ce``,
``dup_weight=4`` (BCCD-WBC: mAP50 not closed, swing up; BCCD over ``scale=0.1``, two seeds:
duplicates down to a third and mAP50 +0.008, but looser platelet boxes and mAP50-95 -0.013 and
-0.016), ``dup_weight=0``,
``mal_gamma=0.5``, ``beta2=0.99`` / ``0.995``, ``lr0`` doubled or halved, ``mixup`` 0 or 0.5,
``scale=0.25`` on large objects, ``min_box_visibility=0.5`` (higher on four classes, lower
and later on BCCD-WBC), ``multi_scale=0.25`` on platelets, ``close_mosaic=8`` and ``=10``.

Kept from the official recipe: AdamW, lr 8e-4 (N) .. 2.5e-4 (L, X), weight decay 1e-4 / 1.25e-4
with none on norms and biases, gradient-norm clip 0.1 (from scratch it acts on every step, so
AdamW sees gradients of one size), EMA decay 0.9999, AMP on GPU, horizontal flips, the per-size
multi-scale setting. Run sizes (imgsz, batch, epochs) stay the user's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from detforge.models.dfine.sizes import official_recipe

# share of the epochs at the end of a run without mosaic / MixUp
NO_AUG_FRACTION = 0.15
# the epoch count assumed when the caller does not say (TrainConfig's default)
DEFAULT_EPOCHS = 100


# sparse-object training sets (one-to-one matching has about one positive query per image):
# at most this many labelled objects per training image on average, background images included
SPARSE_OBJECTS_PER_IMAGE = 2.0
# the classification term's weight from scratch on such sets (module text: "Sparse objects")
SPARSE_CLS_WEIGHT = 2.0
# ... and the trainer settings that start such sets sooner and end them higher (module text,
# "Sparse objects"): no lr warm-up, mosaic on every image, no colour jitter, the random backbone
# at three times the lr, and BatchNorm statistics re-measured on un-augmented training images
# before each validation (the training itself unchanged)
SPARSE_TRAINING = {"warmup_epochs": 0.0, "mosaic": 1.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0,
                   "backbone_lr_mult": 3.0, "precise_bn": 256}
# small objects among them: median object side (square root of the box area) under this share
# of the image's long side (BCCD's platelets 0.06; its white cells 0.30, the synthetic shapes
# 0.22, BCCD in full 0.16) ...
SMALL_OBJECT_SIDE = 0.1
# ... add Copy-Blend on every image, which evened the seeds and the last epochs out and
# raised mAP50, and a fifth of the scale jitter, which tightened the boxes (objects trained at
# sizes near the ones validated; module text: "Small sparse objects") ...
SMALL_SPARSE_TRAINING = {"copy_blend": 1.0, "scale": 0.1}
# ... and train the encoder and decoder at this multiple of lr0 (``head_lr_mult``), the backbone
# where SPARSE_TRAINING has it (three times lr0): those runs were still climbing at the end
SMALL_SPARSE_LR_MULT = 1.5
# ... and end on a longer no-augmentation tail (a quarter of the epochs instead of
# NO_AUG_FRACTION): those runs still gained in every plain epoch, and the longer tail halved
# the movement of the last 5 epochs at the same accuracy
SMALL_SPARSE_NO_AUG_FRACTION = 0.25


def objects_per_image(samples: Sequence[Any]) -> float:
    """Mean labelled objects per image over ``Sample`` records (crowd regions are not targets)."""
    if not samples:
        raise ValueError("D-FINE recipe: no training images to count objects in")
    return sum(len(s.labels) for s in samples) / len(samples)


def median_object_side(samples: Sequence[Any]) -> float | None:
    """Median over every labelled box of its side (square root of its area) as a share of its
    image's long side; None without boxes."""
    sides = [math.sqrt(max(float(b[2] - b[0]), 0.0) * max(float(b[3] - b[1]), 0.0)) / max(s.width, s.height, 1)
             for s in samples for b in s.boxes]
    return statistics.median(sides) if sides else None


def sparse_cls_weight(per_image: float, from_pretrained: bool = False) -> float | None:
    """The classification weight for a training set averaging ``per_image`` objects per image:
    ``SPARSE_CLS_WEIGHT`` from scratch on sparse sets, else None (the criterion's 1.0)."""
    if from_pretrained or per_image > SPARSE_OBJECTS_PER_IMAGE:
        return None
    return SPARSE_CLS_WEIGHT


def sparse_data_defaults(per_image: float, from_pretrained: bool = False, object_side: float | None = None,
                         epochs: int | None = None) -> dict[str, Any]:
    """TrainConfig keys for a training set averaging ``per_image`` objects per image: from
    scratch on sparse sets, twice the classification weight, no lr warm-up, mosaic on every
    image, no colour jitter, the backbone at three times the lr and BatchNorm statistics
    re-measured before each validation; when the median ``object_side``
    (``median_object_side``) is under ``SMALL_OBJECT_SIDE``, also Copy-Blend, a fifth of the
    scale jitter, the rest of the model at ``SMALL_SPARSE_LR_MULT`` times lr0 (``head_lr_mult``;
    the backbone stays at three times it), and given the run's
    ``epochs`` a no-augmentation tail of ``SMALL_SPARSE_NO_AUG_FRACTION`` of them (module
    text, "Sparse objects"); else none (the recipe stands)."""
    weight = sparse_cls_weight(per_image, from_pretrained)
    if weight is None:
        return {}
    values = {"cls_weight": weight, **SPARSE_TRAINING}
    if object_side is not None and object_side < SMALL_OBJECT_SIDE:
        values.update(SMALL_SPARSE_TRAINING)
        values["head_lr_mult"] = SMALL_SPARSE_LR_MULT
        if epochs is not None:
            values["close_mosaic"] = no_aug_epochs(epochs, SMALL_SPARSE_NO_AUG_FRACTION)
    return values


def no_aug_epochs(epochs: int, fraction: float = NO_AUG_FRACTION) -> int:
    """Final epochs without mosaic / MixUp for a run of ``epochs``: ``fraction`` of them (15%),
    at least 1."""
    if int(epochs) < 1:
        raise ValueError(f"D-FINE recipe: epochs must be >= 1, got {epochs}")
    return max(1, round(fraction * int(epochs)))


def small_data_recipe(size: str, epochs: int | None = None, from_pretrained: bool = False) -> dict[str, Any]:
    """detforge's D-FINE recipe for ``size`` ("n".."x") as TrainConfig keys (see the module text).

    ``epochs`` sizes the no-augmentation tail (default: TrainConfig's 100 epochs);
    ``from_pretrained`` keeps the official reduced backbone lr for official weights.
    """
    official = official_recipe(size, "custom")
    return {
        "optimizer": official["optimizer"],
        "lr0": official["lr0"],
        "backbone_lr_mult": official["backbone_lr_mult"] if from_pretrained else 1.0,
        "weight_decay": official["weight_decay"],
        "momentum": official["momentum"],
        "scheduler": "cosine",
        "lrf": 0.1,
        "warmup_epochs": 2.0,
        "warmup_iters": None,
        "clip_grad": official["clip_grad"],
        "ema": True,
        "ema_decay": official["ema_decay"],
        "ema_warmup": "auto",  # sized from the run's steps: see the module text
        "amp": official["amp"],
        "mosaic": 0.5,
        "mixup": 0.2,
        "close_mosaic": no_aug_epochs(DEFAULT_EPOCHS if epochs is None else epochs),
        "multi_scale": official["multi_scale"],
        "fliplr": official["fliplr"],
        "mal": True,
        # MAL's exponent: 1.0 from scratch (see the module text); DEIM's 1.5, under which the
        # official weights were trained, when fine-tuning them
        "mal_gamma": 1.5 if from_pretrained else 1.0,
        # MAL scores aim at IoU**gamma (0.6 for a 0.7-IoU box at 1.5, 0.7 at 1.0), below VFL's;
        # the 0.5 that suits VFL cut most true detections: on BCCD (epoch 5, gamma 1.5) F1 was
        # 0.000 at 0.5 and 0.343 at 0.25
        "conf": 0.25,
    }
