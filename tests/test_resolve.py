"""The one resolved configuration: layer order, sources, per-command keys, help."""

from __future__ import annotations

import pytest
import yaml

from detforge.cli import main
from detforge.config import ConfigError, TrainConfig
from detforge.engine.resolve import (
    COMMANDS_WITH_KEYS,
    apply_data_layer,
    command_config,
    command_keys,
    describe_keys,
    parse_args,
    resolve_train_config,
)


def test_layers_apply_in_order_and_say_where_each_value_came_from(tmp_path):
    # fcos family defaults: adamw, lr0 1e-3, clip_grad 10; cooldet: lars, lr0 8e-4, momentum 0.9
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("lr0: 0.002\nmomentum: 0.8\n")
    resolved = resolve_train_config({"model": "fcos-n", "recipe": "cooldet", "cfg": str(cfg_file),
                                     "momentum": 0.7})
    cfg, src = resolved.cfg, resolved.sources
    assert cfg.clip_grad == 10.0 and src["clip_grad"] == "fcos family defaults"  # family only
    assert cfg.optimizer == "lars" and src["optimizer"] == "recipe=cooldet"  # recipe over family
    assert cfg.lr0 == 0.002 and src["lr0"] == f"cfg {cfg_file}"  # file over recipe
    assert cfg.momentum == 0.7 and src["momentum"] == "key=value"  # command line over file
    assert "mosaic" not in src and cfg.mosaic == TrainConfig().mosaic  # untouched default
    # config.yaml: loadable as cfg= and commented with the sources
    text = resolved.to_yaml()
    assert yaml.safe_load(text)["lr0"] == 0.002
    assert "optimizer: lars  # recipe=cooldet" in text.splitlines()
    # ... and it trains the same run again: train keys only, no resume
    saved = tmp_path / "config.yaml"
    saved.write_text(text)
    again = resolve_train_config({"cfg": str(saved)}).cfg
    assert again.model_dump(exclude={"resume"}) == cfg.model_dump(exclude={"resume"})
    assert "resume" not in yaml.safe_load(text) and "source" not in yaml.safe_load(text)


def test_data_layer_fills_only_keys_that_no_later_layer_set():
    resolved = resolve_train_config({"model": "dfine-n", "recipe": "cooldet", "mosaic": 0.5})
    sparse = {"cls_weight": 2.0, "warmup_epochs": 0.0, "mosaic": 1.0, "mixup": 0.0, "clip_grad": 1.0}
    got = apply_data_layer(resolved, "dfine defaults for sparse data", sparse)
    cfg, src = got.cfg, got.sources
    assert cfg.mosaic == 0.5 and src["mosaic"] == "key=value"  # the user's value stands
    assert cfg.warmup_epochs == 1.0 and src["warmup_epochs"] == "recipe=cooldet"  # so does the recipe's
    assert cfg.mixup == 0.0 and src["mixup"] == "dfine defaults for sparse data"  # over the family's 0.2
    assert cfg.clip_grad == 1.0 and src["clip_grad"] == "dfine defaults for sparse data"
    assert cfg.cls_weight == 2.0 and src["cls_weight"] == "dfine defaults for sparse data"  # over the schema's
    assert "cls_weight: 2.0  # dfine defaults for sparse data" in got.to_yaml().splitlines()
    assert resolved.cfg.mixup == 0.2 and resolved.cfg.cls_weight is None  # the input is not changed
    assert apply_data_layer(resolved, "none", {}) is resolved
    with pytest.raises(ConfigError, match="sparse: names keys the config does not have: \\['warmup'\\]"):
        apply_data_layer(resolved, "sparse", {"warmup": 0})
    with pytest.raises(ConfigError, match="mosaic"):
        apply_data_layer(resolve_train_config({"model": "dfine-n"}), "bad", {"mosaic": 2.0})


def test_resume_keeps_saved_values_the_family_defaults_would_change(tmp_path):
    from detforge.engine.checkpoint import ModelRecord, inference_checkpoint, save_checkpoint

    # mosaic=1.0 is the schema's default and D-FINE's family default is 0.5: a resumed run must
    # continue at 1.0, and say so; keys that came from the family defaults keep that source
    first = resolve_train_config({"model": "dfine-n", "mosaic": 1.0, "warmup_epochs": 0, "epochs": 9})
    record = ModelRecord("dfine-n", 3, ["a", "b", "c"], config=first.cfg.model_dump(mode="json"))
    path = save_checkpoint(inference_checkpoint(record, {}), tmp_path / "last.pt")
    again = resolve_train_config({"resume": str(path)})
    cfg, src = again.cfg, again.sources
    assert (cfg.mosaic, cfg.warmup_epochs, cfg.epochs) == (1.0, 0.0, 9)
    assert src["mosaic"] == src["warmup_epochs"] == f"resumed from {path}"
    assert cfg.clip_grad == 0.1 and src["clip_grad"] == "dfine family defaults"
    assert cfg.model_dump(exclude={"resume"}) == first.cfg.model_dump(exclude={"resume"})
    # what the data chose when it started is in the saved settings; the data layer adds nothing
    assert apply_data_layer(again, "dfine defaults for sparse data", {"mosaic": 0.5}) is again


def test_family_defaults_never_set_the_run_size():
    cfg = resolve_train_config({"model": "dfine-n", "epochs": 7}).cfg
    assert (cfg.imgsz, cfg.batch, cfg.epochs) == (640, 16, 7)
    assert cfg.optimizer == "adamw"  # D-FINE keeps the official optimizer


def test_a_warmup_the_user_sets_is_never_capped():
    assert resolve_train_config({"model": "fcos-n"}).cfg.warmup_max_fraction == 0.1
    mine = resolve_train_config({"model": "fcos-n", "warmup_iters": 500})
    assert mine.cfg.warmup_max_fraction == 0.0 and mine.cfg.warmup_iters == 500


@pytest.mark.parametrize("command, key, fragment", [
    ("train", "format", "'format' is not a key of train (it is a key of: export)"),
    ("predict", "mosaic", "'mosaic' is not a key of predict (it is a key of: train)"),
    ("train", "lr", "unknown key 'lr'; detforge calls it 'lr0'"),
    ("train", "img_size", "detforge calls it 'imgsz'"),
    ("train", "epoch", "detforge calls it 'epochs'"),
    ("eval", "gtt", "did you mean 'gt'?"),
])
def test_each_command_refuses_keys_it_does_not_use(command, key, fragment):
    with pytest.raises(ConfigError) as err:
        if command == "train":
            resolve_train_config({key: 1})
        else:
            command_config(command, {key: 1})
    assert fragment in str(err.value)


def test_cli_refusal_is_one_line_naming_the_command(capsys):
    assert main(["train", "format=onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detforge train:") and "\n" not in err and "format" in err


def test_every_key_has_a_description_a_real_default_and_a_command():
    used = set()
    for command in COMMANDS_WITH_KEYS:
        for key, default, allowed, text in describe_keys(command):
            assert text, f"{key} has no description"
            assert "Undefined" not in default, key
            assert allowed, key
            used.add(key)
    assert used == set(TrainConfig.model_fields), set(TrainConfig.model_fields) - used
    rows = {k: (d, a) for k, d, a, _ in describe_keys("train")}
    assert rows["step_milestones"][0] == "[0.7, 0.9]" and rows["logger"][0] == "['tensorboard']"
    assert "stretch | letterbox" in rows["resize_mode"][1]


def test_help_keys_for_one_command(capsys):
    assert main(["help", "keys", "eval"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("detforge eval:") and " gt " in out and "mosaic" not in out


def test_dotlist_parsing_types():
    got = parse_args(["lr0=1e-3", "name=2024", "batch=16", "amp=false", "data=", "logger=[tensorboard]",
                      "device=0,1"])
    assert got == {"lr0": 1e-3, "name": 2024, "batch": 16, "amp": False, "data": None,
                   "logger": ["tensorboard"], "device": "0,1"}
    with pytest.raises(ConfigError, match="not key=value"):
        parse_args(["epochs"])


def test_train_keys_exclude_inference_only_keys():
    keys = command_keys("train")
    assert "mosaic" in keys and "lr0" in keys
    assert not {"format", "source", "gt", "pred", "decoder_layers"} & set(keys)
