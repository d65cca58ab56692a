"""D-FINE sizes N/S/M/L/X: network settings and training recipes of the official configs
(``configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml`` with ``include/*.yml``, and the
``custom/`` variants for the recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from detforge.models.dfine.hgnetv2 import ARCHS


@dataclass(frozen=True)
class DFineSize:
    # backbone
    backbone: str  # HGNetv2 variant
    lab: bool  # learnable affine blocks after the activations
    return_idx: tuple[int, ...]  # backbone stages fed to the encoder (stride 4 * 2**i)
    frozen_norm: bool  # official: FrozenBatchNorm2d in the backbone (L, X)
    freeze_stem: bool  # official: no gradients into the stem (L, X)
    # hybrid encoder
    enc_dim: int
    enc_ffn: int
    expansion: float
    depth_mult: float
    # decoder
    dec_dim: int
    dec_ffn: int
    num_layers: int
    num_points: tuple[int, ...]  # sampling points per level and head
    reg_scale: float
    enc_heads: int = 8
    dec_heads: int = 8
    num_queries: int = 300
    reg_max: int = 32
    eval_idx: int = -1
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    label_drop_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.backbone not in ARCHS:
            raise ValueError(f"D-FINE size: unknown backbone '{self.backbone}'; known: {', '.join(ARCHS)}")
        if len(self.num_points) != len(self.return_idx):
            raise ValueError(
                f"D-FINE size: num_points {self.num_points} needs one entry per feature level "
                f"({len(self.return_idx)} levels from return_idx {self.return_idx})"
            )
        if self.reg_max < 4 or self.reg_max % 2:
            raise ValueError(f"D-FINE size: reg_max must be an even number >= 4, got {self.reg_max}")

    @property
    def feat_strides(self) -> tuple[int, ...]:
        return tuple(4 * 2**i for i in self.return_idx)

    @property
    def backbone_channels(self) -> tuple[int, ...]:
        stages = ARCHS[self.backbone].stages
        return tuple(stages[i].out_ch for i in self.return_idx)

    @property
    def num_levels(self) -> int:
        return len(self.return_idx)


SIZES: dict[str, DFineSize] = {
    # N: two feature levels (strides 16 and 32) and a 128-wide encoder and decoder
    "n": DFineSize("B0", True, (2, 3), False, False, enc_dim=128, enc_ffn=512, expansion=0.34, depth_mult=0.5,
                   dec_dim=128, dec_ffn=512, num_layers=3, num_points=(6, 6), reg_scale=4.0),
    "s": DFineSize("B0", True, (1, 2, 3), False, False, enc_dim=256, enc_ffn=1024, expansion=0.5, depth_mult=0.34,
                   dec_dim=256, dec_ffn=1024, num_layers=3, num_points=(3, 6, 3), reg_scale=4.0),
    "m": DFineSize("B2", True, (1, 2, 3), False, False, enc_dim=256, enc_ffn=1024, expansion=1.0, depth_mult=0.67,
                   dec_dim=256, dec_ffn=1024, num_layers=4, num_points=(3, 6, 3), reg_scale=4.0),
    "l": DFineSize("B4", False, (1, 2, 3), True, True, enc_dim=256, enc_ffn=1024, expansion=1.0, depth_mult=1.0,
                   dec_dim=256, dec_ffn=1024, num_layers=6, num_points=(3, 6, 3), reg_scale=4.0),
    "x": DFineSize("B5", False, (1, 2, 3), True, True, enc_dim=384, enc_ffn=2048, expansion=1.0, depth_mult=1.0,
                   dec_dim=256, dec_ffn=1024, num_layers=6, num_points=(3, 6, 3), reg_scale=8.0),
}


def size_settings(size: str, **overrides: Any) -> DFineSize:
    """The settings of ``size`` ("n".."x"), with any field replaced by ``overrides``."""
    key = str(size).lower().removeprefix("dfine-")
    if key not in SIZES:
        raise ValueError(f"unknown D-FINE size '{size}'; known: {', '.join(SIZES)}")
    fields = {f.name for f in dataclasses.fields(DFineSize)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown D-FINE setting(s) {unknown}; known: {sorted(fields)}")
    for name in ("return_idx", "num_points"):
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    return dataclasses.replace(SIZES[key], **overrides)


@dataclass(frozen=True)
class OfficialRecipe:
    lr: float
    backbone_lr: float
    weight_decay: float
    epochs: int
    no_aug_epochs: int  # final epochs without the strong augmentations and multi-scale
    batch: int
    multi_scale: bool


# configs/dfine/dfine_hgnetv2_*_coco.yml (COCO, 8 GPUs)
COCO_RECIPES: dict[str, OfficialRecipe] = {
    "n": OfficialRecipe(8e-4, 4e-4, 1e-4, 160, 12, 128, False),
    "s": OfficialRecipe(2e-4, 1e-4, 1e-4, 132, 12, 32, True),
    "m": OfficialRecipe(2e-4, 2e-5, 1e-4, 132, 12, 32, True),
    "l": OfficialRecipe(2.5e-4, 1.25e-5, 1.25e-4, 80, 8, 32, True),
    "x": OfficialRecipe(2.5e-4, 2.5e-6, 1.25e-4, 80, 8, 32, True),
}

# configs/dfine/custom/dfine_hgnetv2_*_custom.yml (the official starting point for own data)
CUSTOM_RECIPES: dict[str, OfficialRecipe] = {
    "n": OfficialRecipe(8e-4, 4e-4, 1e-4, 220, 20, 128, False),
    "s": OfficialRecipe(4e-4, 2e-4, 1e-4, 220, 20, 64, True),
    "m": OfficialRecipe(2.5e-4, 2.5e-5, 1.25e-4, 132, 12, 32, True),
    "l": OfficialRecipe(2.5e-4, 1.25e-5, 1.25e-4, 80, 8, 32, True),
    "x": OfficialRecipe(2.5e-4, 2.5e-6, 1.25e-4, 80, 8, 32, True),
}


def official_recipe(size: str, variant: str = "coco") -> dict[str, Any]:
    """The official training recipe of ``size`` as TrainConfig keys.

    Common to all sizes (configs/dfine/include/optimizer.yml, dataloader.yml): AdamW
    (betas 0.9/0.999) with no weight decay on norms and biases, gradient-norm clip 0.1, EMA
    0.9999 with a 1000-iteration ramp, 500 warm-up iterations and then a constant lr (the
    official MultiStepLR milestone of 500 epochs is never reached), AMP, 640 px, no mosaic
    (the official pipeline uses photometric distortion, zoom-out, IoU crop and flips), and
    multi-scale batches of 0.75x..1.25x except for N.
    """
    table = {"coco": COCO_RECIPES, "custom": CUSTOM_RECIPES}.get(variant)
    if table is None:
        raise ValueError(f"unknown D-FINE recipe variant '{variant}'; known: coco, custom")
    key = str(size).lower().removeprefix("dfine-")
    if key not in table:
        raise ValueError(f"unknown D-FINE size '{size}'; known: {', '.join(table)}")
    r = table[key]
    return {
        "optimizer": "adamw",
        "lr0": r.lr,
        "backbone_lr_mult": r.backbone_lr / r.lr,
        "weight_decay": r.weight_decay,
        "momentum": 0.9,
        "scheduler": "constant",
        "warmup_iters": 500,
        "clip_grad": 0.1,
        "ema": True,
        "ema_decay": 0.9999,
        "ema_warmup": 1000,
        "amp": True,
        "imgsz": 640,
        "epochs": r.epochs,
        "close_mosaic": r.no_aug_epochs,
        "batch": r.batch,
        "mosaic": 0.0,
        "mixup": 0.0,
        "multi_scale": 0.25 if r.multi_scale else 0.0,
        "fliplr": 0.5,
    }
