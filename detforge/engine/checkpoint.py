"""Checkpoints: what a detforge .pt file holds (the one schema), atomic writes, loads that
never run pickled code, tolerant weight transfer.

A detforge checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``: a file that needs anything else (a pickled
class, a function) is refused instead of executed.

The schema (version ``SCHEMA_VERSION``), written only by ``inference_checkpoint`` and
``training_checkpoint`` and read only through ``read_detforge_checkpoint``:

- every file: ``schema``, ``version``, ``kind`` ("inference" | "training"), ``model_name``,
  ``model_options`` (the family constructor's keyword arguments), ``num_classes``, ``names``,
  ``imgsz``, ``resize_mode`` (letterbox settings), ``conf``, ``class_conf`` (per-class
  thresholds or None), ``config`` (the resolved run config), ``metrics``, ``epoch``, and
  ``model`` (the weights to use: the EMA's when the run kept one);
- training files (last.pt) add what an exact resume needs: ``train_weights`` (the raw
  weights), ``ema_updates``, ``optimizer``, ``scaler``, ``schedule``, ``iteration``,
  ``best_fitness``, ``best_epoch``, ``history``, ``bad_steps_total``, ``epoch_progress``
  (sampler position inside an interrupted epoch), ``rng`` / ``rng_per_rank``, ``dcp_dir``.

best.pt is an inference file (weights, metadata and config: what deployment and fine-tuning
need); last.pt a training file. Files of the first format (``format:
detforge-checkpoint-v1``) are read and converted; a newer version is refused with a message.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detforge.errors import CheckpointError
from detforge.weights_file import locate_state_dict, read_checkpoint, strip_prefix


LOG = logging.getLogger("detforge")
SCHEMA = "detforge-checkpoint"
SCHEMA_VERSION = 2
_V1_FORMAT = "detforge-checkpoint-v1"
_RECORD_KEYS = ("model_name", "model_options", "num_classes", "names", "imgsz", "resize_mode", "conf",
                "class_conf", "config", "metrics", "epoch")
_TRAINING_KEYS = ("train_weights", "ema_updates", "optimizer", "scaler", "schedule", "iteration", "best_fitness",
                  "best_epoch", "history", "bad_steps_total", "epoch_progress", "rng", "rng_per_rank", "dcp_dir")


@dataclass
class ModelRecord:
    """What every reader of a detforge checkpoint needs besides the weights."""

    model_name: str
    num_classes: int
    names: list[str]
    model_options: dict[str, Any] = field(default_factory=dict)
    imgsz: int = 640
    resize_mode: str = "stretch"
    conf: float = 0.25
    class_conf: list[float] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _RECORD_KEYS}


def inference_checkpoint(record: ModelRecord, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """best.pt / exported-for-fine-tuning: weights + metadata + config, no optimizer or RNG."""
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "kind": "inference", **record.fields(), "model": weights}


def training_checkpoint(record: ModelRecord, weights: dict[str, torch.Tensor],
                        train_state: dict[str, Any]) -> dict[str, Any]:
    """last.pt: ``weights`` to deploy (EMA's or the model's) plus every key of the resume state
    (see the module text; missing ones are an error, so a resume never half-restores)."""
    missing = [k for k in _TRAINING_KEYS if k not in train_state]
    if missing:
        raise ValueError(f"training checkpoint: resume state lacks {missing}")
    extra = sorted(set(train_state) - set(_TRAINING_KEYS))
    if extra:
        raise ValueError(f"training checkpoint: keys not in the schema: {extra}")
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "kind": "training", **record.fields(), "model": weights,
            **train_state}


def _upgrade_v1(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Files of the first format: 'model' held the raw weights and 'ema' the average."""
    out = {k: v for k, v in ckpt.items() if k not in ("format", "model", "ema")}
    ema, raw = ckpt.get("ema"), ckpt.get("model")
    out.update(schema=SCHEMA, version=SCHEMA_VERSION, model=ema if ema is not None else raw,
               model_options=ckpt.get("model_options") or {})
    out["kind"] = "training" if ckpt.get("optimizer") is not None or ckpt.get("dcp_dir") else "inference"
    if out["kind"] == "training":
        out["train_weights"] = raw
    out.setdefault("metrics", {})
    out.setdefault("epoch", -1)
    out.setdefault("class_conf", None)
    return out


def read_detforge_checkpoint(path: str | Path, need: str = "inference") -> dict[str, Any]:
    """A detforge checkpoint, checked against the schema (older formats converted).
    ``need="training"`` also requires the resume state (a last.pt)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") == _V1_FORMAT:
        ckpt = _upgrade_v1(ckpt)
    if ckpt.get("schema") != SCHEMA:
        raise CheckpointError(
            f"{path}: not a detforge checkpoint; to start from other weights give a model name and "
            "pretrained=PATH (e.g. model=dfine-s pretrained=PATH)"
        )
    version = int(ckpt.get("version", 0))
    if version > SCHEMA_VERSION:
        raise CheckpointError(f"{path}: written by a newer detforge (checkpoint version {version}; this one reads "
                              f"up to {SCHEMA_VERSION}): upgrade detforge to read it")
    missing = [k for k in ("model_name", "num_classes", "names", "model") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: damaged detforge checkpoint, missing {missing}")
    if need == "training" and ckpt.get("kind") != "training":
        raise CheckpointError(f"{path}: holds weights only ({ckpt.get('kind')}); resume needs a run's last.pt")
    return ckpt


def read_model_record(source: str | Path | dict[str, Any]) -> ModelRecord:
    ckpt = source if isinstance(source, dict) else read_detforge_checkpoint(source)
    values = {k: ckpt[k] for k in _RECORD_KEYS if k in ckpt and ckpt[k] is not None}
    cfg = ckpt.get("config") or {}
    for k in ("imgsz", "resize_mode", "conf"):
        if k not in values and k in cfg:
            values[k] = cfg[k]
    values["names"] = list(values.get("names") or [str(i) for i in range(int(ckpt["num_classes"]))])
    return ModelRecord(**values)


def update_checkpoint(path: str | Path, **fields: Any) -> Path:
    """Change metadata fields of a checkpoint in place (atomically), e.g. ``class_conf``."""
    unknown = sorted(set(fields) - set(_RECORD_KEYS))
    if unknown:
        raise ValueError(f"update_checkpoint: not metadata fields: {unknown}")
    ckpt = read_detforge_checkpoint(path)
    ckpt.update(fields)
    return save_checkpoint(ckpt, path)


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a kill at any moment leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return read_checkpoint(path, map_location)


# ---------------------------------------------------------------- RNG state (plain types only)
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only (one GPU per rank)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        torch.cuda.set_rng_state((cuda[0] if isinstance(cuda, (list, tuple)) else cuda).cpu())


# ---------------------------------------------------------------- weight transfer
def find_state_dict(obj: dict[str, Any], prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    return locate_state_dict(obj, prefer_ema)[0]


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str = "") -> dict[str, Any]:
    """Copy every tensor whose name and shape match; report what was skipped and why."""
    state = strip_prefix(state)
    own = model.state_dict()
    loaded, shape_mismatch, unexpected = [], [], []
    to_load = {}
    for k, v in state.items():
        if k not in own:
            unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            shape_mismatch.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            to_load[k] = v
            loaded.append(k)
    model.load_state_dict(to_load, strict=False)
    missing = [k for k in own if k not in to_load]
    report = {
        "source": source,
        "loaded": len(loaded),
        "total": len(own),
        "shape_mismatch": shape_mismatch,
        "missing": missing,
        "unexpected": unexpected,
    }
    LOG.info(
        "pretrained %s: loaded %d/%d tensors; %d skipped for shape (e.g. a different class count), "
        "%d missing from the file, %d in the file but not in the model",
        source or "weights", len(loaded), len(own), len(shape_mismatch), len(missing), len(unexpected),
    )
    for line in shape_mismatch[:10]:
        LOG.info("  shape mismatch: %s", line)
    return report


def build_with_weights(name: str, num_classes: int, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a model and start it from ``pretrained``:

    - a detforge checkpoint: every tensor whose name and shape match (``load_pretrained``);
    - otherwise the family's own reader of published files when it has one: the constructor's
      ``pretrained`` (D-FINE: it refuses a file of another size and freezes what the official
      config freezes over pretrained weights) or ``ModelSpec.load_weights`` (Darknet .weights,
      effdet and torchvision state dicts through their name maps);
    - otherwise name-and-shape matching."""
    import inspect

    from detforge.models.zoo import build_model, get_spec

    spec = get_spec(name)
    foreign = bool(pretrained) and not is_detforge_checkpoint(pretrained)
    if foreign and "pretrained" in inspect.signature(spec.build).parameters:
        return build_model(name, num_classes, pretrained=pretrained, **kwargs)
    model = build_model(name, num_classes, **kwargs)
    if foreign and spec.load_weights is not None:
        model.load_report = spec.load_weights(model, str(pretrained))
    elif pretrained:
        model.load_report = load_pretrained(model, pretrained)
    return model


def is_detforge_checkpoint(path: str | Path) -> bool:
    """True for a file detforge wrote (any schema version); False for anything else."""
    path = Path(path)
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt", ".tar") or not path.is_file():
        return False
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        return False
    return ckpt.get("schema") == SCHEMA or ckpt.get("format") == _V1_FORMAT


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, Any]:
    obj = load_checkpoint(path)
    return load_matching(model, find_state_dict(obj), source=str(path))


def set_decoder_layers(model: nn.Module, layers: int | None) -> nn.Module:
    """``decoder_layers=``: only models with a layered decoder (DETRs) can predict from fewer."""
    if layers is None:
        return model
    setter = getattr(model, "set_decoder_layers", None)
    if setter is None:
        name = getattr(model, "model_name", type(model).__name__)
        raise ValueError(f"decoder_layers={layers}: {name} has no decoder layers to leave out (DETR models do)")
    return setter(int(layers))


def load_detector_checkpoint(path: str | Path, decoder_layers: int | None = None,
                             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A detforge checkpoint -> (model built with its saved options and weights, checkpoint)."""
    from detforge.models.zoo import build_model

    ckpt = read_detforge_checkpoint(path)
    record = read_model_record(ckpt)
    model = build_model(record.model_name, record.num_classes, **record.model_options)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        LOG.warning("%s: %d missing and %d unexpected tensors", path, len(missing), len(unexpected))
    model.eval()
    set_decoder_layers(model, decoder_layers)
    return model, ckpt
