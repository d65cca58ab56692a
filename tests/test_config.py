import pytest

from detforge.config import ConfigError, TrainConfig, build_config, parse_overrides


def test_layers_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nimgsz: 320\nlr0: 0.002\n")
    cfg = build_config({"imgsz": 416}, preset={"epochs": 3, "mosaic": 0.5}, cfg_file=f)
    assert (cfg.epochs, cfg.imgsz, cfg.lr0, cfg.mosaic) == (7, 416, 0.002, 0.5)


def test_overrides_are_typed():
    o = parse_overrides(["epochs=3", "amp=false", "lr0=1e-3", "device=0,1", "name=exp1", "logger=none"])
    assert o == {"epochs": 3, "amp": False, "lr0": 1e-3, "device": "0,1", "name": "exp1", "logger": "none"}
    cfg = build_config(o)
    assert cfg.device == "0,1" and cfg.logger == [] and cfg.lr0 == pytest.approx(1e-3)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match="unknown key 'epoch'; did you mean 'epochs'"):
        build_config({"epoch": 3})
    with pytest.raises(ConfigError, match="did you mean 'close_mosaic'"):
        build_config({"close_mosiac": 3})


def test_bad_values_name_key_and_allowed():
    with pytest.raises(ConfigError, match="'optimizer'.*'sgd'"):
        build_config({"optimizer": "adagrad"})
    with pytest.raises(ConfigError, match="'mosaic'"):
        build_config({"mosaic": 1.5})
    with pytest.raises(ConfigError, match="'batch'"):
        build_config({"batch": 2.5})
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["epochs"])


def test_batch_forms():
    assert build_config({"batch": -1}).batch == -1
    assert build_config({"batch": 0.7}).batch == 0.7
    assert build_config({"batch": 8}).batch == 8


def test_ema_warmup_forms():
    assert build_config({"ema_warmup": "auto"}).ema_warmup == "auto"
    assert build_config({"ema_warmup": "AUTO"}).ema_warmup == "auto"
    assert build_config({"ema_warmup": 80}).ema_warmup == 80
    assert build_config(parse_overrides(["ema_warmup=80"])).ema_warmup == 80
    for bad in (-1, "fast", 2.5):
        with pytest.raises(ConfigError, match="ema_warmup"):
            build_config({"ema_warmup": bad})


def test_every_issue_key_exists():
    keys = """model data epochs imgsz batch device workers project name exist_ok seed deterministic resume
    fraction optimizer lr0 lrf weight_decay momentum warmup_epochs scheduler ema amp accumulate clip_grad
    patience save_period conf iou_thr mosaic close_mosaic mixup mixup_mode cutout resize_mode
    ignore_background_epochs fitness logger cache multi_scale pretrained parallel sync_bn lr_scale
    nominal_batch recipe""".split()
    missing = [k for k in keys if k not in TrainConfig.model_fields]
    assert not missing


def test_auto_batch_on_cpu_uses_the_default(caplog):
    import logging

    import torch

    from detforge.engine.autobatch import CPU_DEFAULT, auto_batch

    cfg = build_config({"batch": -1})
    log = logging.getLogger("detforge")  # detforge's logger does not propagate to the root
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="detforge"):
            assert auto_batch(torch.nn.Linear(1, 1), cfg, torch.device("cpu")) == CPU_DEFAULT == 16
    finally:
        log.removeHandler(caplog.handler)
    assert "auto batch needs CUDA" in caplog.text
