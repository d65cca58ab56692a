"""Augmentation in numpy + OpenCV on uint8 images; boxes always follow the pixels."""

from .cutout import cutout, random_cutout, visible_fraction
from .geometric import (
    PAD_VALUE,
    affine_boxes,
    base_resize_matrix,
    flip_lr,
    flip_ud,
    random_affine_matrix,
    rotate90,
    warp_image,
    warp_targets,
)
from .mixup import mixup_geometry, mixup_overlay
from .mosaic import mosaic4
from .pipeline import EvalTransform, TrainTransform
from .resize import letterbox, limit_long_side, stretch
from .targets import Targets

__all__ = [
    "PAD_VALUE", "EvalTransform", "Targets", "TrainTransform", "affine_boxes", "base_resize_matrix",
    "cutout", "flip_lr", "flip_ud", "letterbox", "limit_long_side", "mixup_geometry", "mixup_overlay",
    "mosaic4", "random_affine_matrix", "random_cutout", "rotate90", "stretch", "visible_fraction",
    "warp_image", "warp_targets",
]
