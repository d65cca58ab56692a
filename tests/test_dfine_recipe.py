"""detforge's default D-FINE recipe (models/dfine/recipe.py) and the model's MAL default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detforge.config import build_config
from detforge.models.dfine import DFine, official_recipe
from detforge.engine.resolve import resolve_train_config
from detforge.models.dfine.recipe import (SMALL_OBJECT_SIDE, SMALL_SPARSE_LR_MULT, SMALL_SPARSE_NO_AUG_FRACTION,
                                          SPARSE_CLS_WEIGHT, median_object_side, no_aug_epochs, objects_per_image,
                                          small_data_recipe, sparse_cls_weight, sparse_data_defaults)
from detforge.records import Sample

SIZES = ("n", "s", "m", "l", "x")


def _meta_model(size: str) -> DFine:
    with torch.device("meta"):
        return DFine(size, num_classes=3)


@pytest.mark.parametrize("size", SIZES)
def test_recipe_is_a_valid_config_that_keeps_the_official_optimiser(size):
    r = small_data_recipe(size)
    cfg = build_config(preset=r)  # every key is a TrainConfig field with an allowed value
    official = official_recipe(size, "custom")
    assert cfg.optimizer == "adamw" and cfg.lr0 == official["lr0"] and cfg.weight_decay == official["weight_decay"]
    assert cfg.clip_grad == 0.1 and cfg.ema_decay == 0.9999 and cfg.multi_scale == official["multi_scale"]
    # the changes for small data
    assert (cfg.scheduler, cfg.lrf, cfg.mosaic, cfg.mixup, cfg.mal) == ("cosine", 0.1, 0.5, 0.2, True)
    assert cfg.warmup_iters is None and cfg.warmup_epochs == 2.0 and cfg.ema_warmup == "auto"
    # run sizes stay the user's
    assert not {"imgsz", "batch", "epochs"} & set(r)


def test_backbone_lr_full_from_scratch_official_from_weights():
    assert small_data_recipe("n")["backbone_lr_mult"] == 1.0
    assert small_data_recipe("x")["backbone_lr_mult"] == 1.0
    assert small_data_recipe("n", from_pretrained=True)["backbone_lr_mult"] == pytest.approx(0.5)  # 4e-4 / 8e-4
    assert small_data_recipe("x", from_pretrained=True)["backbone_lr_mult"] == pytest.approx(0.01)  # 2.5e-6 / 2.5e-4


def test_mal_exponent_one_from_scratch_deims_from_weights():
    assert small_data_recipe("n")["mal_gamma"] == 1.0 and small_data_recipe("x")["mal_gamma"] == 1.0
    assert small_data_recipe("n", from_pretrained=True)["mal_gamma"] == 1.5
    # the recipe's exponent reaches the criterion through the config
    from detforge.models.zoo import get_spec

    options = get_spec("dfine-n").options(build_config(preset=small_data_recipe("n")))
    with torch.device("meta"):
        assert DFine("n", num_classes=3, **options).criterion().mal_gamma == 1.0


def test_no_augmentation_tail_is_about_15_percent_of_the_run():
    assert [no_aug_epochs(e) for e in (1, 8, 25, 72, 100)] == [1, 1, 4, 11, 15]
    assert small_data_recipe("s", epochs=25)["close_mosaic"] == 4
    assert small_data_recipe("s")["close_mosaic"] == 15  # TrainConfig's default 100 epochs
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        no_aug_epochs(0)
    with pytest.raises(ValueError, match="unknown D-FINE size"):
        small_data_recipe("q")


def test_model_recipe_and_mal_default():
    model = _meta_model("n")
    assert model.recipe() == small_data_recipe("n")
    assert model.recipe(epochs=25)["close_mosaic"] == 4
    assert model.criterion().use_mal is True
    with torch.device("meta"):
        vfl = DFine("n", num_classes=3, loss_options={"use_mal": False, "label_smoothing": 0.1})
    assert vfl.criterion().use_mal is False and vfl.criterion().label_smoothing == 0.1


def _samples(counts: list[int]) -> list[Sample]:
    """Images of 100x100 px with the given numbers of 10x10 boxes (0 = background image)."""
    return [Sample(f"im{i}.jpg", np.array([[10 * j, 0, 10 * j + 10, 10] for j in range(n)], np.float32).reshape(-1, 4),
                   np.zeros(n, np.int64), 100, 100) for i, n in enumerate(counts)]


def test_sparse_sets_get_twice_the_classification_weight_from_scratch():
    # 1 + 2 + 0 + 3 objects over 4 images (the background image counts: it has no positives)
    assert objects_per_image(_samples([1, 2, 0, 3])) == pytest.approx(1.5)
    assert SPARSE_CLS_WEIGHT == 2.0
    assert sparse_cls_weight(1.0) == 2.0 and sparse_cls_weight(2.0) == 2.0  # BCCD-WBC 1.0, synthetic-sparse ~1.3
    assert sparse_cls_weight(2.01) is None and sparse_cls_weight(13.0) is None  # BCCD ~13: the criterion's 1
    assert sparse_cls_weight(1.0, from_pretrained=True) is None  # official weights were trained at 1
    assert sparse_data_defaults(1.3) == {"cls_weight": 2.0, "warmup_epochs": 0.0, "mosaic": 1.0,
                                         "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "backbone_lr_mult": 3.0,
                                         "precise_bn": 256}
    assert sparse_data_defaults(13.0) == {} and sparse_data_defaults(1.0, from_pretrained=True) == {}
    with pytest.raises(ValueError, match="no training images"):
        objects_per_image([])


def _set_up_trainer(root, tmp_path, extra: dict):
    """A D-FINE-N trainer on ``root``, set up (data read, data defaults chosen), not trained."""
    from detforge.engine.trainer import Trainer

    cfg = resolve_train_config({"model": "dfine-n", "data": str(root), "project": str(tmp_path / "runs"),
                                "imgsz": 96, "batch": 4, "epochs": 10, "workers": 0, "device": "cpu",
                                "logger": "none", "plots": False, **extra})
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.log.close()
    return trainer


def test_small_sparse_objects_add_copy_blend():
    # 10x10 boxes in 100x100 images: side 0.1 of the long side, not under SMALL_OBJECT_SIDE
    assert SMALL_OBJECT_SIDE == 0.1 and median_object_side(_samples([1, 2, 0])) == pytest.approx(0.1)
    # sides 0.05 (a 5x5 box), 0.08 (4x16) and 0.3 (a 30x30 box) in 100x60 images: median 0.08
    small = [Sample("a.jpg", np.array([[0, 0, 5, 5], [10, 10, 14, 26]], np.float32), np.zeros(2, np.int64), 100, 60),
             Sample("b.jpg", np.array([[0, 0, 30, 30]], np.float32), np.zeros(1, np.int64), 60, 100)]
    assert median_object_side(small) == pytest.approx(0.08)
    assert median_object_side(_samples([0, 0])) is None
    base = sparse_data_defaults(1.3)
    # the rest of the model at 1.5 times lr0, the backbone at three times it as on any sparse set
    assert base["backbone_lr_mult"] == 3.0 and SMALL_SPARSE_LR_MULT == 1.5 and "head_lr_mult" not in base
    fast = sparse_data_defaults(1.3, object_side=0.08)
    assert fast == {**base, "copy_blend": 1.0, "scale": 0.1, "head_lr_mult": 1.5}
    # given the run's length, a no-augmentation tail of a quarter of it (the recipe's: 15%)
    assert SMALL_SPARSE_NO_AUG_FRACTION == 0.25
    assert sparse_data_defaults(1.3, object_side=0.08, epochs=25) == {**fast, "close_mosaic": 6}
    assert no_aug_epochs(25) == 4 and no_aug_epochs(100, SMALL_SPARSE_NO_AUG_FRACTION) == 25
    assert sparse_data_defaults(1.3, object_side=0.3, epochs=25) == base  # large objects: as they were
    assert sparse_data_defaults(1.3, object_side=0.1) == base  # BCCD-WBC 0.30, synthetic 0.22: as before
    assert sparse_data_defaults(1.3, object_side=None) == base
    assert sparse_data_defaults(13.0, object_side=0.05) == {}  # dense sets keep the recipe
    assert sparse_data_defaults(1.0, from_pretrained=True, object_side=0.05) == {}


@pytest.mark.parametrize("extra, blend, jitter, lr0, head, tail", [
    ({}, 1.0, 0.1, 8e-4, 1.5, 3), ({"copy_blend": 0.5}, 0.5, 0.1, 8e-4, 1.5, 3),
    ({"scale": 0.5}, 1.0, 0.5, 8e-4, 1.5, 3), ({"lr0": 5e-4}, 1.0, 0.1, 5e-4, 1.5, 3),
    ({"lr0": 5e-4, "head_lr_mult": 1.0}, 1.0, 0.1, 5e-4, 1.0, 3), ({"close_mosaic": 1}, 1.0, 0.1, 8e-4, 1.5, 1)])
def test_trainer_blends_in_small_sparse_objects(tmp_path, extra, blend, jitter, lr0, head, tail):
    """The synthetic shapes shrunk to 4% of the image: a small-object sparse set, so the data
    layer adds Copy-Blend, cuts the scale jitter, raises the lr of all but the backbone and
    lengthens the no-augmentation tail (and says why in config.yaml) unless the user set them."""
    from detforge.data.synthetic import ensure_synthetic

    root = ensure_synthetic(tmp_path / "data", n_train=8, n_val=2, size=96, objects=(1, 2))
    for label in (root / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(f"{r[0]} {r[1]} {r[2]} 0.04 0.04\n" for r in rows))
    trainer = _set_up_trainer(root, tmp_path, {"epochs": 12, **extra})
    assert median_object_side(trainer.train_set.samples) == pytest.approx(0.04)
    assert trainer.cfg.copy_blend == blend and trainer.train_set.cfg.copy_blend == blend
    assert trainer.cfg.scale == jitter and trainer.train_set.cfg.scale == jitter
    assert trainer.cfg.mosaic == 1.0  # the other sparse settings as on any sparse set
    saved = (trainer.save_dir / "config.yaml").read_text()
    assert ("copy_blend: 1.0  # dfine defaults for sparse data" in saved) == ("copy_blend" not in extra)
    assert ("scale: 0.1  # dfine defaults for sparse data" in saved) == (jitter == 0.1)
    assert trainer.cfg.head_lr_mult == head and trainer.cfg.backbone_lr_mult == 3.0
    assert ("head_lr_mult: 1.5  # dfine defaults for sparse data" in saved) == ("head_lr_mult" not in extra)
    # the optimizer's groups: the backbone at lr0 x 3, the rest at lr0 x head_lr_mult, so a lr0
    # the user sets moves both (N's own lr0: 8e-4, so 2.4e-3 and 1.2e-3)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone_decay"] == pytest.approx(lr0 * 3) and lrs["decay"] == pytest.approx(lr0 * head)
    assert lrs["no_decay"] == pytest.approx(lr0 * head) and lrs["backbone_no_decay"] == pytest.approx(lr0 * 3)
    assert "median object side 0.040 of the image" in saved
    # a quarter of the 12 epochs without mosaic / MixUp / Copy-Blend (the recipe's 15%: 2)
    assert trainer.cfg.close_mosaic == tail and no_aug_epochs(12) == 2
    assert ("close_mosaic: 3  # dfine defaults for sparse data" in saved) == ("close_mosaic" not in extra)


@pytest.mark.parametrize("objects, extra, weight, warmup, mosaic, hsv, backbone, precise", [
    ((1, 2), {}, 2.0, 0.0, 1.0, (0.0, 0.0, 0.0), 3.0, 256),  # sparse, from scratch: the sparse settings
    # the user's weight stands, the rest from the data
    ((1, 2), {"cls_weight": 1.0}, 1.0, 0.0, 1.0, (0.0, 0.0, 0.0), 3.0, 256),
    # the user's trainer settings stand, one colour key alone included
    ((1, 2), {"warmup_epochs": 2.0, "mosaic": 0.5, "hsv_v": 0.3, "backbone_lr_mult": 1.0, "precise_bn": 0}, 2.0,
     2.0, 0.5, (0.0, 0.0, 0.3), 1.0, 0),
    # 4-6 objects per image: not sparse, the recipe stands
    ((4, 6), {}, 1.0, 2.0, 0.5, (0.015, 0.7, 0.4), 1.0, 0),
])
def test_trainer_takes_the_sparse_settings_from_the_data_and_records_them(tmp_path, objects, extra, weight,
                                                                          warmup, mosaic, hsv, backbone, precise):
    from detforge.data.synthetic import ensure_synthetic

    root = ensure_synthetic(tmp_path / "data", n_train=12, n_val=4, size=96, objects=objects)
    trainer = _set_up_trainer(root, tmp_path, extra)
    per_image = objects_per_image(trainer.train_set.samples)
    sparse = objects == (1, 2)
    assert (per_image <= 2.0) == sparse
    assert trainer.model.criterion().weights["mal"] == weight
    assert trainer.model.criterion().weights["vfl"] == weight
    assert trainer.model.criterion().weights["bbox"] == 5.0  # the box terms keep theirs
    # the trainer runs with the chosen settings: the schedule, the data pipeline, the config
    assert (trainer.cfg.warmup_epochs, trainer.cfg.mosaic) == (warmup, mosaic)
    assert (trainer.schedule.warmup_iters == 0) == (warmup == 0)
    assert trainer.train_set.cfg.mosaic == mosaic
    assert (trainer.cfg.hsv_h, trainer.cfg.hsv_s, trainer.cfg.hsv_v) == hsv
    assert (trainer.train_set.cfg.hsv_h, trainer.train_set.cfg.hsv_s, trainer.train_set.cfg.hsv_v) == hsv
    # the optimizer's backbone groups start at the chosen multiple of the others' lr (D-FINE-N's 8e-4)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"backbone_decay", "backbone_no_decay", "decay", "no_decay"}
    for name, group in groups.items():
        mult = backbone if name.startswith("backbone_") else 1.0
        assert group["initial_lr"] == pytest.approx(8e-4 * mult), name
    # BatchNorm statistics re-measured before each validation on the (12) training images
    assert trainer.cfg.precise_bn == precise
    assert (trainer.bn_loader is not None) == (precise > 0)
    if precise:
        assert len(trainer.bn_loader.dataset) == len(trainer.train_set) == 12
    # a checkpoint's reader rebuilds the model with the weight it was trained with
    recorded = trainer.model_options["loss_options"].get("weights", {}).get("mal", 1.0)
    assert recorded == weight
    # config.yaml says which keys the data chose; the run's own log says so too
    saved = (trainer.save_dir / "config.yaml").read_text().splitlines()
    side = median_object_side(trainer.train_set.samples)
    why = (f"# dfine defaults for sparse data ({per_image:.2f} objects per training image, "
           f"median object side {side:.3f} of the image)")
    assert ("mosaic: 1.0  " + why in saved) == (sparse and "mosaic" not in extra)
    assert ("cls_weight: 2.0  " + why in saved) == (sparse and "cls_weight" not in extra)
    assert ("hsv_s: 0.0  " + why in saved) == sparse
    chosen = "training settings from the training data (dfine-n)" in (trainer.save_dir / "train.log").read_text()
    assert chosen == sparse
