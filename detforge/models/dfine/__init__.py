"""D-FINE (Peng et al., arXiv 2410.13842) in sizes N/S/M/L/X, registered as dfine-n .. dfine-x."""

from __future__ import annotations

import logging
from functools import partial

from detforge.models.dfine.model import DFine
from detforge.models.dfine.recipe import (SPARSE_OBJECTS_PER_IMAGE, objects_per_image, small_data_recipe,
                                          sparse_cls_weight)
from detforge.models.dfine.sizes import SIZES, official_recipe
from detforge.models.dfine.weights import load_official
from detforge.models.zoo import ModelSpec, register

LOG = logging.getLogger("detforge")

_BACKBONES = {"n": "HGNetv2-B0, 2 levels", "s": "HGNetv2-B0", "m": "HGNetv2-B2", "l": "HGNetv2-B4", "x": "HGNetv2-B5"}



def _options(cfg, default_cls_weight: float | None = None) -> dict:
    """Loss settings from the config, in the form DFine's constructor takes; the config's
    ``cls_weight`` wins over ``default_cls_weight`` (one chosen from the data)."""
    loss = {"label_smoothing": float(cfg.label_smoothing)}
    if getattr(cfg, "mal", None) is not None:
        loss["use_mal"] = bool(cfg.mal)
    if getattr(cfg, "mal_gamma", None) is not None:
        loss["mal_gamma"] = float(cfg.mal_gamma)
    cls_weight = getattr(cfg, "cls_weight", None)
    cls_weight = default_cls_weight if cls_weight is None else cls_weight
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
    # denoising settings replace the size's own only when given, so older runs rebuild unchanged
    for key, field, cast in (("dn_queries", "num_denoising", int), ("dn_box_noise", "box_noise_scale", float),
                             ("dn_label_noise", "label_noise_ratio", float)):
        if getattr(cfg, key, None) is not None:
            options[field] = cast(getattr(cfg, key))
    return options


def _prepare(cfg, train_samples) -> dict:
    """Twice the classification weight from scratch on sparse-object training sets (recipe.py,
    "Sparse objects"), unless the config sets ``cls_weight`` itself."""
    if getattr(cfg, "cls_weight", None) is not None:
        return {}
    per_image = objects_per_image(train_samples)
    weight = sparse_cls_weight(per_image, from_pretrained=bool(getattr(cfg, "pretrained", None)))
    if weight is None:
        return {}
    LOG.info("D-FINE: %.2f objects per training image (at most %g): classification weight %g from scratch "
             "(cls_weight=1 keeps 1)", per_image, SPARSE_OBJECTS_PER_IMAGE, weight)
    return {"loss_options": _options(cfg, default_cls_weight=weight)["loss_options"]}


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
        prepare=_prepare,
        detr=True,
    ))

__all__ = ["DFine", "SIZES", "load_official", "official_recipe"]
