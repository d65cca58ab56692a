"""D-FINE (Peng et al., arXiv 2410.13842) in sizes N/S/M/L/X, registered as dfine-n .. dfine-x."""

from __future__ import annotations

import logging
from functools import partial

from detforge.models.dfine.model import DFine
from detforge.models.dfine.recipe import (SPARSE_OBJECTS_PER_IMAGE, median_object_side, objects_per_image,
                                          small_data_recipe, sparse_data_defaults)
from detforge.models.dfine.sizes import SIZES, official_recipe
from detforge.models.dfine.weights import load_official
from detforge.models.zoo import ModelSpec, register

LOG = logging.getLogger("detforge")

_BACKBONES = {"n": "HGNetv2-B0, 2 levels", "s": "HGNetv2-B0", "m": "HGNetv2-B2", "l": "HGNetv2-B4", "x": "HGNetv2-B5"}


def _options(cfg) -> dict:
    """Loss settings from the config, in the form DFine's constructor takes."""
    loss = {"label_smoothing": float(cfg.label_smoothing)}
    if getattr(cfg, "mal", None) is not None:
        loss["use_mal"] = bool(cfg.mal)
    if getattr(cfg, "mal_gamma", None) is not None:
        loss["mal_gamma"] = float(cfg.mal_gamma)
    cls_weight = getattr(cfg, "cls_weight", None)
    if cls_weight is not None:
        # one weight for whichever classification term the criterion uses
        loss["weights"] = {"vfl": float(cls_weight), "mal": float(cls_weight)}
    if getattr(cfg, "dup_weight", 1.0) != 1.0:
        loss["dup_weight"] = float(cfg.dup_weight)
    if getattr(cfg, "class_ce", 0.0):
        loss["class_ce"] = float(cfg.class_ce)
    options = {"loss_options": loss}
    if getattr(cfg, "o2m", 0):
        options.update(o2m=int(cfg.o2m), o2m_queries=cfg.o2m_queries)
    if getattr(cfg, "enc_o2m", 0):
        options["enc_o2m"] = int(cfg.enc_o2m)
    if getattr(cfg, "dense_cls", 0.0):
        options["dense_cls"] = float(cfg.dense_cls)
    # denoising settings replace the size's own only when given, so older runs rebuild unchanged
    for key, field, cast in (("dn_queries", "num_denoising", int), ("dn_box_noise", "box_noise_scale", float),
                             ("dn_label_noise", "label_noise_ratio", float),
                             ("dn_label_drop", "label_drop_ratio", float)):
        if getattr(cfg, key, None) is not None:
            options[field] = cast(getattr(cfg, key))
    return options


def _data_defaults(train_samples, pretrained: bool, epochs: int) -> tuple[dict, str]:
    """From scratch on sparse-object training sets: the recipe's settings for them (recipe.py,
    "Sparse objects"); what the user sets wins."""
    per_image = objects_per_image(train_samples)
    # the object size only matters on sparse sets, where it is also cheap to measure
    side = median_object_side(train_samples) if per_image <= SPARSE_OBJECTS_PER_IMAGE else None
    values = sparse_data_defaults(per_image, from_pretrained=pretrained, object_side=side, epochs=epochs)
    size = "" if side is None else f", median object side {side:.3f} of the image"
    if values:
        LOG.info("D-FINE: %.2f objects per training image (at most %g)%s, from scratch: %s (keys you set win)",
                 per_image, SPARSE_OBJECTS_PER_IMAGE, size, " ".join(f"{k}={v:g}" for k, v in values.items()))
    return values, f"dfine defaults for sparse data ({per_image:.2f} objects per training image{size})"


def _recipe(size: str):
    def recipe(epochs: int, pretrained: bool = False) -> dict:
        return small_data_recipe(size, epochs=epochs, from_pretrained=pretrained)

    return recipe


# D-FINE's constructor takes pretrained= itself (it reads official checkpoints and freezes what
# the official config freezes over pretrained weights), so no separate load_weights here
for _size in SIZES:
    register(ModelSpec(
        name=f"dfine-{_size}",
        family="dfine",
        build=partial(DFine, _size),
        description=f"D-FINE-{_size.upper()} ({_BACKBONES[_size]}); NMS-free real-time DETR",
        defaults=_recipe(_size),
        options=_options,
        data_defaults=_data_defaults,
        detr=True,
    ))

__all__ = ["DFine", "SIZES", "load_official", "official_recipe"]
