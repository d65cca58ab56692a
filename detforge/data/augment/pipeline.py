"""The training and evaluation transforms, driven by the run configuration.

Training order: geometry (mosaic of 4 + random affine, or one image + random affine, each a
single warp into the output) -> overlay MixUp -> Copy-Blend -> photometric -> cutout -> flips -> rot90.
Geometry-preserving MixUp happens before the geometry, on the two images as loaded, as in
the paper. Mosaic, MixUp and Copy-Blend are the "strong" augmentations that ``open_mosaic`` and
``close_mosaic`` keep off at the start and end of a run.
Every random choice comes from the ``rng`` passed in, so an item is a pure function of
(seed, epoch, index).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import photometric as ph
from .copy_blend import copy_blend
from .cutout import random_cutout
from .geometric import (
    base_resize_matrix,
    flip_lr,
    flip_ud,
    random_affine_matrix,
    rotate90,
    draw_image,
    warp_targets,
)
from .mixup import GEOMETRY_BETA, OVERLAY_BETA, mixup_geometry, mixup_overlay
from .mosaic import mosaic4
from .resize import resize_for_eval
from .targets import Targets

# index -> (uint8 RGB image, targets in that image's pixels)
LoadFn = Callable[[int], tuple[np.ndarray, Targets]]


class TrainTransform:
    """``cfg`` is a TrainConfig (or anything with the same augmentation fields)."""

    def __init__(self, cfg, size: int) -> None:
        self.cfg = cfg
        self.size = size

    def __call__(
        self, index: int, load: LoadFn, num_items: int, rng: np.random.Generator, strong: bool = True
    ) -> tuple[np.ndarray, Targets, dict]:
        cfg = self.cfg
        info = {"mosaic": False, "mixup": None}
        do_mixup = strong and cfg.mixup > 0 and rng.random() < cfg.mixup
        geometry_mix = do_mixup and cfg.mixup_mode == "geometry"
        img, targets, info["mosaic"] = self._geometry(index, load, num_items, rng, strong, geometry_mix)
        if geometry_mix:
            info["mixup"] = "geometry"
        elif do_mixup:
            other, other_t, _ = self._geometry(int(rng.integers(num_items)), load, num_items, rng, strong, False)
            img, targets = mixup_overlay(img, targets, other, other_t, rng.beta(*OVERLAY_BETA))
            info["mixup"] = "overlay"
        if strong and getattr(cfg, "copy_blend", 0.0) > 0 and rng.random() < cfg.copy_blend:
            # the donor goes through the same single-image geometry, so object scales match
            donor, donor_t, _ = self._geometry(int(rng.integers(num_items)), load, num_items, rng, False, False)
            img, targets = copy_blend(img, targets, donor, donor_t, rng)
        img = self._photometric(img, rng)
        if cfg.cutout > 0 and rng.random() < cfg.cutout:
            img, targets = random_cutout(img, targets, rng, cfg.min_box_visibility)
        if cfg.fliplr > 0 and rng.random() < cfg.fliplr:
            img, targets = flip_lr(img, targets)
        if cfg.flipud > 0 and rng.random() < cfg.flipud:
            img, targets = flip_ud(img, targets)
        if cfg.rot90 > 0 and rng.random() < cfg.rot90:
            img, targets = rotate90(img, targets, int(rng.integers(1, 4)))
        return img, targets, info

    def _load(self, index, load, num_items, rng, geometry_mix):
        img, targets = load(index)
        if geometry_mix:
            img2, t2 = load(int(rng.integers(num_items)))
            img, targets = mixup_geometry(img, targets, img2, t2, rng.beta(*GEOMETRY_BETA))
        return img, targets

    def _affine(self, rng, center, zoom: float = 1.0):
        c = self.cfg
        return random_affine_matrix(rng, center, self.size, c.degrees, c.translate, c.scale, c.shear, zoom)

    def _geometry(self, index, load, num_items, rng, strong, geometry_mix):
        cfg, s = self.cfg, self.size
        first = self._load(index, load, num_items, rng, geometry_mix)
        if strong and cfg.mosaic > 0 and rng.random() < cfg.mosaic:
            tiles = [first] + [load(int(j)) for j in rng.integers(0, num_items, 3)]
            # the tiles meet within s/2 of the canvas centre at zoom 1 (YOLO) and at the centre
            # at zoom 0.5, where the shrunken canvas shows all four tiles whole (DEIM)
            zoom = getattr(cfg, "mosaic_zoom", 1.0)
            jitter = s * max(0.0, zoom - 0.5)
            center = (int(rng.uniform(s - jitter, s + jitter)), int(rng.uniform(s - jitter, s + jitter)))
            affine = self._affine(rng, (s, s), zoom)  # centre of the virtual 2s x 2s canvas
            img, targets = mosaic4(
                tiles, s, center, affine, cfg.resize_mode, cfg.min_box_size, cfg.min_box_visibility
            )
            return img, targets, True
        img, targets = first
        h, w = img.shape[:2]
        m = self._affine(rng, (s / 2, s / 2)) @ base_resize_matrix(w, h, s, cfg.resize_mode)
        out, m = draw_image(img, m, s)
        return out, warp_targets(targets, m, s, s, cfg.min_box_size, cfg.min_box_visibility), False

    def _photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        # the geometry step always hands over a fresh image, so it may be changed in place
        img = ph.random_hsv(img, rng, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v, cfg.hsv_mode, inplace=True)
        alpha, beta, gamma = 1.0, 0.0, 1.0
        if cfg.brightness > 0 and rng.random() < cfg.brightness:
            alpha, beta = ph.random_brightness_contrast(rng)
        if cfg.gamma > 0 and rng.random() < cfg.gamma:
            gamma = ph.random_gamma(rng)
        if (alpha, beta, gamma) != (1.0, 0.0, 1.0):
            img = ph.apply_lut(img, ph.tone_lut(alpha, beta, gamma))
        if cfg.blur > 0 and rng.random() < cfg.blur:
            img = ph.random_blur(img, rng)
        if cfg.noise > 0 and rng.random() < cfg.noise:
            img = ph.gaussian_noise(img, rng)
        if cfg.to_gray > 0 and rng.random() < cfg.to_gray:
            img = ph.to_gray(img)
        return img


class EvalTransform:
    """Validation/test: resize (stretch) or letterbox only; the model normalises to 0..1."""

    def __init__(self, size: int, resize_mode: str) -> None:
        self.size = size
        self.resize_mode = resize_mode

    def __call__(self, img: np.ndarray, targets: Targets):
        """-> (image, targets, (sx, sy), (px, py))"""
        return resize_for_eval(img, targets, self.size, self.resize_mode)
