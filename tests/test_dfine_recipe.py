"""detforge's default D-FINE recipe (models/dfine/recipe.py) and the model's MAL default."""

from __future__ import annotations

import pytest
import torch

from detforge.config import build_config
from detforge.models.dfine import DFine, official_recipe
from detforge.models.dfine.recipe import no_aug_epochs, small_data_recipe

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
