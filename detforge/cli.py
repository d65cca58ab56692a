"""`detforge <command> key=value ...` — train, val, predict, export, eval, data, bench, models."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from detforge.config import FIELDS, ConfigError, KeysRequested, closest_key
from detforge.errors import DetforgeError
from detforge.engine.resolve import command_config, parse_args, read_user_layers

LOG = logging.getLogger("detforge")

USAGE = """usage: detforge <command> [key=value ...] [cfg=file.yaml]

commands:
  train    train a model             detforge train model=dfine-n data=PATH epochs=50 imgsz=640
  val      score a checkpoint        detforge val model=runs/train/weights/best.pt data=PATH
  predict  run on images / video     detforge predict model=best.pt source=DIR conf=0.5
  export   onnx | openvino | tensorrt  detforge export model=best.pt format=onnx
  eval     score COCO predictions    detforge eval gt=COCO.json pred=DETECTIONS.json
  compare  rank models on your data  detforge compare data=PATH models=dfine-n,fcos-n epochs=25
  data     check | convert           detforge data check data=PATH
  bench    latency | train | data | stability
  models   list the available models

Each command takes its own keys: `detforge help keys COMMAND` lists those of train, val, predict,
export, eval and compare with their defaults; `detforge data` and `detforge bench` print their usage.
"""


def _given(argv: list[str], command: str) -> tuple[dict[str, Any], set[str]]:
    """(key=value and cfg file values, checked against the command; the keys the user set)."""
    file_values, cli, _ = read_user_layers(command, parse_args(argv))
    return {**file_values, **cli}, set(file_values) | set(cli)


def cmd_train(argv: list[str]) -> int:
    from detforge.engine.trainer import Trainer
    from detforge.engine.resolve import resolve_train_config

    resolved = resolve_train_config(parse_args(argv))  # pretrained=NAME is fetched there, once
    if "," in resolved.cfg.device:  # from the command line or the cfg file
        from detforge.engine.launch import maybe_launch_torchrun

        args = [a for a in argv if not a.startswith(("device=", "pretrained="))] + [f"device={resolved.cfg.device}"]
        args += [f"pretrained={resolved.cfg.pretrained}"] if resolved.cfg.pretrained else []  # the fetched file
        code = maybe_launch_torchrun(["train", *args], resolved.cfg.device)
        if code is not None:
            return code
    Trainer(resolved).train()
    return 0


def cmd_val(argv: list[str]) -> int:
    from detforge.api import Detector

    values, _ = _given(argv, "val")
    model = values.pop("model", None)
    if not model:
        raise ConfigError("val needs model=PATH/TO/best.pt")
    command_config("val", {"model": model, **values})  # validate values before loading anything
    Detector(str(model), decoder_layers=values.get("decoder_layers")).val(**values)
    return 0


def cmd_predict(argv: list[str]) -> int:
    from detforge.infer.commands import predict_command

    values, given = _given(argv, "predict")
    return predict_command(command_config("predict", values), given)


def cmd_export(argv: list[str]) -> int:
    from detforge.export.commands import export_command

    values, given = _given(argv, "export")
    return export_command(command_config("export", values), given)


def cmd_eval(argv: list[str]) -> int:
    from detforge.eval.eval_files import evaluate_files

    values, _ = _given(argv, "eval")
    cfg = command_config("eval", values)
    if not cfg.gt or not cfg.pred:
        raise ConfigError("eval needs gt=COCO_ANNOTATIONS.json and pred=COCO_RESULTS.json")
    m = evaluate_files(cfg.gt, cfg.pred, conf=cfg.conf, iou_thr=cfg.iou_thr, save_dir=cfg.save_dir)
    print(
        f"mAP50-95 {m['map50_95']:.4f}  mAP50 {m['map50']:.4f}  mAP75 {m['map75']:.4f}  "
        f"P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}  IoU {m['iou']:.4f}"
    )
    if "segm_map50_95" in m:  # the predictions carry masks
        print(f"mask mAP50-95 {m['segm_map50_95']:.4f}  mAP50 {m['segm_map50']:.4f}  mAP75 {m['segm_map75']:.4f}")
    return 0


def _no_action(argv: list[str]) -> bool:
    """No action word first (nothing, key=value, or a request for help): show the usage."""
    return not argv or "=" in argv[0] or argv[0] in ("-h", "--help", "help")


def _action_args(argv: list[str]) -> dict:
    """key=value after the action word; ``-h`` / ``--help`` there asks for the action's keys."""
    wants_help = any(a in ("-h", "--help") for a in argv)
    args = parse_args([a for a in argv if a not in ("-h", "--help")])
    return {**args, "help": True} if wants_help else args


def cmd_data(argv: list[str]) -> int:
    from detforge.data.commands import data_command

    if _no_action(argv):
        raise ConfigError("usage: detforge data check|convert data=PATH [to=yolo|coco|voc out=DIR]")
    return data_command(argv[0], _action_args(argv[1:]))


def cmd_bench(argv: list[str]) -> int:
    from detforge.bench.commands import bench_command

    if _no_action(argv):
        raise ConfigError("usage: detforge bench latency|train|data|stability key=value ...")
    return bench_command(argv[0], _action_args(argv[1:]))


def cmd_compare(argv: list[str]) -> int:
    from detforge.compare import compare_command

    values, given = _given(argv, "compare")
    return compare_command(command_config("compare", values), given)


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
    """`detforge help keys [COMMAND]`: each key with its default, allowed values and meaning."""
    if argv and argv[0] == "keys":
        from detforge.engine.resolve import COMMANDS_WITH_KEYS, describe_keys

        commands = argv[1:] or list(COMMANDS_WITH_KEYS)
        for command in commands:
            print(f"detforge {command}:")
            for key, default, allowed, text in describe_keys(command):
                print(f"  {key:24s} {default:>12s}  {allowed:28s} {text}")
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
    except KeysRequested as e:
        print(e)
        return 0
    except ConfigError as e:
        print(f"detforge {command}: {e}", file=sys.stderr)
        return 2
    # bad inputs (CheckpointError, DatasetError, CacheError, a diverging run, a missing optional
    # package): one line, no traceback
    except (DetforgeError, FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        print(f"detforge {command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"detforge {command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "FIELDS"]
