"""`detforge <command> key=value ...` — train, val, predict, export, eval, data, bench, models."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from detforge.config import FIELDS, ConfigError, build_config, closest_key, parse_overrides
from detforge.errors import NonFiniteLossError

LOG = logging.getLogger("detforge")

USAGE = """usage: detforge <command> [key=value ...] [cfg=file.yaml]

commands:
  train    train a model             detforge train model=dfine-n data=PATH epochs=50 imgsz=640
  val      score a checkpoint        detforge val model=runs/train/weights/best.pt data=PATH
  predict  run on images / video     detforge predict model=best.pt source=DIR conf=0.5
  export   onnx | openvino | tensorrt  detforge export model=best.pt format=onnx
  eval     score COCO predictions    detforge eval gt=COCO.json pred=DETECTIONS.json
  data     check | convert           detforge data check data=PATH
  bench    latency | train | data | stability
  compare  rank models on your data  detforge compare data=PATH models=dfine-n,fcos-n epochs=25
  models   list the available models

Every key is a field of the config (detforge/config.py); `detforge help keys` lists them.
"""


def _split(argv: list[str]) -> tuple[dict[str, Any], str | None]:
    overrides = parse_overrides(argv)
    cfg_file = overrides.pop("cfg", None)
    return overrides, cfg_file


def _given(overrides: dict[str, Any], cfg_file: str | None) -> set[str]:
    """Keys the user set, on the command line or in the cfg file (the rest may come from a
    checkpoint's own settings)."""
    from detforge.config import load_yaml

    return set(overrides) | (set(load_yaml(cfg_file)) if cfg_file else set())


def cmd_train(argv: list[str]) -> int:
    from detforge.engine.trainer import Trainer

    overrides, cfg_file = _split(argv)
    cfg = build_config(overrides, cfg_file=cfg_file)
    from detforge.hub import resolve_in_config

    cfg = resolve_in_config(cfg)  # pretrained=NAME -> its downloaded file, before any worker starts
    if "," in cfg.device:  # from the command line or the cfg file
        from detforge.engine.launch import maybe_launch_torchrun

        args = [a for a in argv if not a.startswith(("device=", "pretrained="))] + [f"device={cfg.device}"]
        args += [f"pretrained={cfg.pretrained}"] if cfg.pretrained else []
        code = maybe_launch_torchrun(["train", *args], cfg.device)
        if code is not None:
            return code
    Trainer(cfg).train()
    return 0


def cmd_val(argv: list[str]) -> int:
    from detforge.api import Detector

    overrides, cfg_file = _split(argv)
    if cfg_file:
        from detforge.config import load_yaml

        overrides = {**load_yaml(cfg_file), **overrides}
    model = overrides.pop("model", None)
    if not model:
        raise ConfigError("val needs model=PATH/TO/best.pt")
    cfg = build_config({"model": model, **overrides})  # validate keys before loading anything
    Detector(str(model), decoder_layers=cfg.decoder_layers).val(**overrides)
    return 0


def cmd_predict(argv: list[str]) -> int:
    from detforge.infer.commands import predict_command

    overrides, cfg_file = _split(argv)
    return predict_command(build_config(overrides, cfg_file=cfg_file), _given(overrides, cfg_file))


def cmd_export(argv: list[str]) -> int:
    from detforge.export.commands import export_command

    overrides, cfg_file = _split(argv)
    return export_command(build_config(overrides, cfg_file=cfg_file), _given(overrides, cfg_file))


def cmd_eval(argv: list[str]) -> int:
    from detforge.eval.eval_files import evaluate_files

    overrides, cfg_file = _split(argv)
    cfg = build_config(overrides, cfg_file=cfg_file)
    if not cfg.gt or not cfg.pred:
        raise ConfigError("eval needs gt=COCO_ANNOTATIONS.json and pred=COCO_RESULTS.json")
    m = evaluate_files(cfg.gt, cfg.pred, conf=cfg.conf, iou_thr=cfg.iou_thr, save_dir=cfg.save_dir)
    print(
        f"mAP50-95 {m['map50_95']:.4f}  mAP50 {m['map50']:.4f}  mAP75 {m['map75']:.4f}  "
        f"P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  IoU {m['iou']:.4f}"
    )
    return 0


def cmd_data(argv: list[str]) -> int:
    from detforge.data.commands import data_command

    if not argv or "=" in argv[0]:
        raise ConfigError("usage: detforge data check|convert data=PATH [to=yolo|coco|voc out=DIR]")
    return data_command(argv[0], parse_overrides(argv[1:]))


def cmd_bench(argv: list[str]) -> int:
    from detforge.bench.commands import bench_command

    if not argv or "=" in argv[0]:
        raise ConfigError("usage: detforge bench latency|train|data|stability key=value ...")
    return bench_command(argv[0], parse_overrides(argv[1:]))


def cmd_compare(argv: list[str]) -> int:
    from detforge.compare import compare_command

    overrides, cfg_file = _split(argv)
    return compare_command(build_config(overrides, cfg_file=cfg_file), _given(overrides, cfg_file))


def cmd_models(argv: list[str]) -> int:
    from detforge.hub import published_names
    from detforge.models.zoo import available, get_spec

    models = available()
    width = max((len(n) for n in models), default=12)
    for name in models:
        names = published_names(name)
        weights = f"  [pretrained: {', '.join(names)}]" if names else ""
        print(f"{name:{width}s} {get_spec(name).description}{weights}")
    return 0


def cmd_help(argv: list[str]) -> int:
    if argv and argv[0] == "keys":
        from detforge.config import TrainConfig

        for name, f in TrainConfig.model_fields.items():
            print(f"{name:26s} default {f.default!r:12}  {f.description or ''}")
        return 0
    print(USAGE)
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cmd_train,
    "val": cmd_val,
    "predict": cmd_predict,
    "export": cmd_export,
    "eval": cmd_eval,
    "data": cmd_data,
    "bench": cmd_bench,
    "compare": cmd_compare,
    "models": cmd_models,
    "help": cmd_help,
}


def main(argv: list[str] | None = None) -> int:
    from detforge.utils.runtime import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        hint = closest_key(command, list(COMMANDS))
        print(f"detforge: unknown command '{command}'" + (f"; did you mean '{hint}'?" if hint else ""), file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except ConfigError as e:
        print(f"detforge {command}: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:  # bad inputs: CheckpointError, DatasetError, ...
        print(f"detforge {command}: {e}", file=sys.stderr)
        return 1
    except NonFiniteLossError as e:
        print(f"detforge {command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"detforge {command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "FIELDS"]
