"""From what the user typed to the one configuration a command runs with.

Every command parses ``key=value`` (OmegaConf's dotlist grammar) and an optional ``cfg=FILE``,
refuses keys it does not use (naming the command and the closest key it does use), and
validates values through the one schema, ``TrainConfig`` (detforge/config.py).

``train`` resolves its layers in this order (later wins):

    defaults < model family defaults < family defaults for the data < recipe= < cfg= file
    < key=value  (a resumed run: the saved run's settings over the family defaults)

and remembers where every non-default value came from; config.yaml records both. All but one
layer are resolved before anything is read or built. The family defaults for the data are
settings a family chooses from the training split's labels (D-FINE from scratch on images with
one or two objects each, for instance); the trainer adds them with ``apply_data_layer`` once the
data is read and before the model, the data pipeline or the optimizer is built. They fill only
keys that no later layer set, and a resumed run keeps what it was started with.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from detforge.config import ConfigError, TrainConfig, format_validation_error, load_yaml

LOG = logging.getLogger("detforge")

# names other tools use for detforge's keys
ALIASES: dict[str, str] = {
    "lr": "lr0", "learning_rate": "lr0", "base_lr": "lr0", "lr_final": "lrf",
    "img_size": "imgsz", "image_size": "imgsz", "img": "imgsz", "size": "imgsz", "input_size": "imgsz",
    "epoch": "epochs", "max_epochs": "epochs", "num_epochs": "epochs",
    "batch_size": "batch", "bs": "batch", "num_workers": "workers",
    "wd": "weight_decay", "optim": "optimizer", "lr_scheduler": "scheduler", "sched": "scheduler",
    "conf_thres": "conf", "conf_threshold": "conf", "score_thr": "conf", "iou_thres": "iou_thr", "iou": "iou_thr",
    "weights": "pretrained", "gpus": "device", "gpu": "device", "nc": "num_classes", "warmup": "warmup_epochs",
    "amp_enabled": "amp", "half_precision": "half", "out": "save_dir", "output_dir": "save_dir",
}

_RUN = {"project", "name", "exist_ok"}
_LOGS = {"verbose", "plots"}
# keys only the inference-side commands use; every other key belongs to train
_NOT_TRAIN = {
    "split", "source", "save", "save_txt", "save_json", "save_gt", "save_dir", "cut_padding", "format",
    "dynamic", "half", "opset", "gt", "pred", "backend", "threads", "decoder_layers",
    "models", "runs", "runtime", "max_latency_ms", "train_batch", "latency_iters",
}
_COMMANDS: dict[str, set[str]] = {
    "val": {"model", "data", "split", "imgsz", "batch", "workers", "device", "conf", "iou_thr", "max_det",
            "decoder_layers", "fitness", "resize_mode", "amp", "amp_dtype", "seed", "save_dir", "save_json"}
    | _RUN | _LOGS,
    "predict": {"model", "source", "data", "split", "imgsz", "batch", "device", "conf", "iou_thr", "max_det",
                "decoder_layers", "save", "save_txt", "save_json", "save_gt", "save_dir", "cut_padding",
                "backend", "threads", "workers"} | _RUN | _LOGS,
    "export": {"model", "format", "dynamic", "half", "opset", "imgsz", "batch", "device", "decoder_layers",
               "max_det", "conf", "save_dir", "verbose"},
    "eval": {"gt", "pred", "conf", "iou_thr", "max_det", "save_dir", "plots", "verbose"},
    "compare": {"data", "models", "runs", "runtime", "max_latency_ms", "epochs", "imgsz", "batch", "device",
                "workers", "threads", "seed", "conf", "iou_thr", "max_det", "fraction", "split", "train_batch",
                "latency_iters"} | _RUN | _LOGS,
}

# settings a family's defaults may fill when the user left them alone; sizes of the run
# (imgsz, batch, epochs) stay the user's: a COCO recipe's 640 px x 160 epochs is no default
FAMILY_SKIP = frozenset({"imgsz", "batch", "epochs", "model", "data"})
# what a resumed run may change; everything else continues as saved
RESUME_OVERRIDABLE = frozenset({"device", "workers", "resume", "epochs", "verbose", "plots", "logger",
                                "checkpoint_every", "checkpoint_minutes", "dist_timeout"})


def command_keys(command: str) -> list[str]:
    """The keys ``command`` accepts, in the schema's order."""
    fields = list(TrainConfig.model_fields)
    if command == "train":
        return [k for k in fields if k not in _NOT_TRAIN]
    if command not in _COMMANDS:
        raise ConfigError(f"unknown command '{command}'; commands with keys: {', '.join(COMMANDS_WITH_KEYS)}")
    return [k for k in fields if k in _COMMANDS[command]]


COMMANDS_WITH_KEYS = ("train", *_COMMANDS)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``["epochs=3", "name=2024", "batch=1,2"]`` -> ``{"epochs": 3, "name": 2024, "batch": "1,2"}``
    with OmegaConf's grammar (``1e-3`` float, ``true`` bool, ``[1,2]`` list, empty -> None)."""
    items = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument '{arg}' is not key=value (e.g. epochs=10)")
        key, value = arg.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if not key or "." in key:
            raise ConfigError(f"argument '{arg}': expected key=value with a plain key (e.g. epochs=10)")
        items.append(f"{key}={value}")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(items), resolve=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"could not read {' '.join(argv)}: {str(e).splitlines()[0]}") from None
    return dict(parsed)


def unknown_key_message(command: str, key: str, allowed: list[str]) -> str:
    if key in ALIASES and ALIASES[key] in allowed:
        return f"unknown key '{key}'; detforge calls it '{ALIASES[key]}'"
    if key in TrainConfig.model_fields:
        users = [c for c in COMMANDS_WITH_KEYS if key in command_keys(c)]
        where = f" (it is a key of: {', '.join(users)})" if users else ""
        return f"'{key}' is not a key of {command}{where}; `detforge help keys {command}` lists its keys"
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}'{hint} (`detforge help keys {command}` lists the keys of {command})"


def check_keys(command: str, given: dict[str, Any]) -> None:
    allowed = command_keys(command)
    bad = [k for k in given if k not in allowed]
    if bad:
        raise ConfigError("; ".join(unknown_key_message(command, k, allowed) for k in bad))


def validate(values: dict[str, Any]) -> TrainConfig:
    if values.get("device") is not None:
        values = {**values, "device": str(values["device"])}
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def read_user_layers(command: str, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(cfg-file values, key=value values, cfg file path), both checked against ``command``."""
    args = dict(args)
    cfg_file = args.pop("cfg", None)
    file_values = load_yaml(cfg_file) if cfg_file else {}
    check_keys(command, file_values)
    check_keys(command, args)
    return file_values, args, (str(cfg_file) if cfg_file else None)


def command_config(command: str, args: dict[str, Any], base: dict[str, Any] | None = None) -> TrainConfig:
    """Config of a non-training command: defaults < ``base`` (e.g. a checkpoint's own
    settings) < cfg file < key=value."""
    file_values, cli, _ = read_user_layers(command, args)
    return validate({**(base or {}), **file_values, **cli})


# ------------------------------------------------------------------ train
@dataclass
class ResolvedConfig:
    """The training configuration and where each non-default value came from."""

    cfg: TrainConfig
    sources: dict[str, str] = field(default_factory=dict)
    family_defaults: dict[str, Any] = field(default_factory=dict)
    resume_from: Path | None = None
    family_source: str = ""  # the family defaults' source label (what a data layer may replace)

    def user_set(self, key: str) -> bool:
        """Set by the user (cfg file, key=value or the resumed run), not by a default layer."""
        src = self.sources.get(key, "default")
        return src.startswith(("cfg", "key=value", "resumed"))

    def to_yaml(self) -> str:
        """The training keys as YAML, each non-default one commented with its source. Loaded
        back as ``cfg=`` it trains the same run again: the other commands' keys and ``resume``
        (which would continue the old run instead) are left out."""
        lines = []
        keep = set(command_keys("train")) - {"resume"}
        for key, value in self.cfg.model_dump(mode="json", include=keep).items():
            text = yaml.safe_dump({key: value}, default_flow_style=True, width=10_000).strip()
            text = text[1:-1] if text.startswith("{") and text.endswith("}") else text
            src = self.sources.get(key)
            lines.append(f"{text}  # {src}" if src else text)
        return "\n".join(lines) + "\n"


def _model_name_of(value: str) -> str:
    """A model name, or the model name stored in a detforge checkpoint (fine-tuning from it)."""
    if str(value).endswith(".pt"):
        from detforge.engine.checkpoint import read_model_record

        return read_model_record(value).model_name
    return str(value)


def find_resume_checkpoint(resume: Any, project: str) -> Path | None:
    if resume in (False, None) or str(resume).lower() == "false":
        return None
    if resume is True or str(resume).lower() == "true":
        found = sorted(Path(project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise ConfigError(f"resume=true: no weights/last.pt under project={project}")
        return found[-1]
    path = Path(str(resume))
    if not path.is_file():
        raise ConfigError(f"resume={resume}: file not found")
    return path


def resolve_train_config(args: dict[str, Any]) -> ResolvedConfig:
    """The one training configuration (see the module text)."""
    from detforge.engine.recipes import TRAINING_RECIPES
    from detforge.models.zoo import get_spec

    file_values, cli, cfg_file = read_user_layers("train", args)
    user = {**file_values, **cli}
    user_src = {k: f"cfg {cfg_file}" for k in file_values} | {k: "key=value" for k in cli}
    defaults = TrainConfig.model_fields

    def current(key: str) -> Any:
        return user[key] if key in user else _default(key)

    resume_from = find_resume_checkpoint(current("resume"), str(current("project")))
    saved: dict[str, Any] = {}
    if resume_from is not None:
        saved = _resumable_settings(resume_from, user)
        model_name = _model_name_of(saved.get("model", current("model")))
    else:
        model_name = _model_name_of(validate({"model": current("model")}).model)

    layers: list[tuple[str, dict[str, Any]]] = []
    try:
        spec = get_spec(model_name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    epochs = int(saved.get("epochs", current("epochs")))
    family = {k: v for k, v in spec.defaults(epochs, bool(saved.get("pretrained", current("pretrained")))).items()
              if k not in FAMILY_SKIP}
    unknown = sorted(set(family) - set(defaults))
    if unknown:
        raise ConfigError(f"{model_name}: its family defaults name keys the config does not have: {unknown}")
    family_source = f"{spec.family} family defaults"
    layers.append((family_source, family))
    recipe_name = saved.get("recipe", current("recipe"))
    if recipe_name in TRAINING_RECIPES:
        layers.append((f"recipe={recipe_name}", TRAINING_RECIPES[recipe_name]))
    if saved:
        layers.append((f"resumed from {resume_from}", saved))
    else:
        layers.append(("user", user))

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, values in layers:
        for k, v in values.items():
            if values is saved and v == merged.get(k, _default(k)):
                continue  # the lower layers give the saved value: their source stays
            merged[k] = v
            sources[k] = user_src.get(k, name) if name == "user" else name
    if saved:  # what a resume may change, from this command line
        for k in RESUME_OVERRIDABLE & set(user):
            merged[k] = user[k]
            sources[k] = user_src[k]
    # a warm-up the user chose is theirs; one from a default layer is capped to the run's length
    if not saved and {"warmup_epochs", "warmup_iters"} & set(user) and "warmup_max_fraction" not in user:
        merged["warmup_max_fraction"] = 0.0
        sources["warmup_max_fraction"] = "warm-up set by the user, so not capped"
    if merged.get("pretrained") and not saved:  # pretrained=NAME -> the published file, fetched once
        from detforge.hub import resolve_pretrained

        path = resolve_pretrained(model_name, merged["pretrained"])
        if path != merged["pretrained"]:
            sources["pretrained"] = f"published weights '{merged['pretrained']}' for {model_name}"
            merged["pretrained"] = path
    cfg = validate(merged)
    return ResolvedConfig(cfg, sources, family, resume_from, family_source)


def _default(key: str) -> Any:
    return TrainConfig.model_fields[key].get_default(call_default_factory=True)


def apply_data_layer(resolved: ResolvedConfig, source: str, values: dict[str, Any]) -> ResolvedConfig:
    """``resolved`` with the family's settings for the training data (``values``, TrainConfig
    keys) placed just above the family defaults: a key that recipe=, cfg=, key=value or a
    resumed run set keeps its value. ``source`` says why (config.yaml comments each key with
    it). The result is validated like every other layer."""
    unknown = sorted(set(values) - set(TrainConfig.model_fields))
    if unknown:
        raise ConfigError(f"{source}: names keys the config does not have: {unknown}")
    if resolved.resume_from is not None:
        return resolved  # the saved run already holds what its data chose
    below = {None, resolved.family_source}
    taken = {k: v for k, v in values.items() if resolved.sources.get(k) in below}
    if not taken:
        return resolved
    cfg = validate({**resolved.cfg.model_dump(), **taken})
    sources = {**resolved.sources, **{k: source for k in taken}}
    return ResolvedConfig(cfg, sources, resolved.family_defaults, resolved.resume_from, resolved.family_source)


def _resumable_settings(path: Path, user: dict[str, Any]) -> dict[str, Any]:
    """The saved run's settings; keys given now that a resume cannot change are ignored, and said so."""
    from detforge.engine.checkpoint import read_model_record

    saved = dict(read_model_record(path).config)
    fields = TrainConfig.model_fields
    defaults = TrainConfig().model_dump(mode="json")
    # every saved value, those equal to TrainConfig's default too: a family default that differs
    # (D-FINE's mosaic 0.5 under a run started with mosaic=1.0) must not replace it mid-run
    known = {k: v for k, v in saved.items() if k in fields}
    dropped = sorted(set(saved) - set(fields))
    if dropped:
        LOG.warning("resume: the checkpoint's config has keys this version does not know, ignored: %s", dropped)
    ignored = sorted(k for k in set(user) - RESUME_OVERRIDABLE if user[k] != known.get(k, defaults.get(k)))
    if ignored:
        LOG.warning("resume: continuing the saved run's settings; ignored %s (start a new run to change them)",
                    ", ".join(f"{k}={user[k]}" for k in ignored))
    known["resume"] = str(path)
    return known


# ------------------------------------------------------------------ help
# keys whose default or meaning differs for one command: (default, description)
COMMAND_KEY_HELP: dict[str, dict[str, tuple[str, str]]] = {
    "compare": {
        "batch": ("1", "images per inference call when timing latency (the training batch is train_batch=)"),
        "split": ("test, else val", "split every model is scored on: test when the dataset has val and test "
                  "(best.pt is chosen on val), else val"),
    },
}


def describe_keys(command: str) -> list[tuple[str, str, str, str]]:
    """(key, default, allowed values, description) for each key of ``command``."""
    import typing

    rows = []
    for key in command_keys(command):
        f = TrainConfig.model_fields[key]
        default = f.get_default(call_default_factory=True)
        ann = f.annotation
        allowed = ""
        args = typing.get_args(ann)
        literals = [a for a in (args or (ann,)) if typing.get_origin(a) is typing.Literal]
        if typing.get_origin(ann) is typing.Literal:
            allowed = " | ".join(map(str, typing.get_args(ann)))
        elif literals:  # e.g. int | Literal["auto"] -> "int | auto"
            others = [getattr(a, "__name__", str(a)) for a in args if typing.get_origin(a) is not typing.Literal]
            allowed = " | ".join([n for n in others if n != "NoneType"]
                                 + [str(v) for lit in literals for v in typing.get_args(lit)])
        else:
            names = [getattr(a, "__name__", str(a)) for a in (args or (ann,))]
            allowed = " | ".join("null" if n == "NoneType" else n for n in names)
        bounds = [f"{m.__class__.__name__.lower()} {list(vars(m).values())[0]}" for m in f.metadata
                  if hasattr(m, "__dict__") and vars(m)]
        if bounds:
            allowed += " (" + ", ".join(bounds) + ")"
        text = f.description or ""
        default = "null" if default is None else str(default)
        default, text = COMMAND_KEY_HELP.get(command, {}).get(key, (default, text))
        rows.append((key, default, allowed, text))
    return rows
