"""Checkpoints: atomic writes, loads that never run pickled code, tolerant weight transfer.

A detforge checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``: a file that needs anything else (a pickled
class, a function) is refused instead of executed.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detforge.weights_file import locate_state_dict, read_checkpoint, strip_prefix


LOG = logging.getLogger("detforge")
FORMAT = "detforge-checkpoint-v1"


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
    """Build a model and start it from ``pretrained``. A family that loads its own official
    files (its constructor takes ``pretrained``, as D-FINE's does: it refuses a file of another
    size, freezes what the official config freezes over pretrained weights, and its recipe
    switches to the fine-tuning backbone lr) is given the path; others get ``load_pretrained``."""
    import inspect

    from detforge.models.zoo import build_model, get_spec

    if pretrained and "pretrained" in inspect.signature(get_spec(name).build).parameters:
        return build_model(name, num_classes, pretrained=pretrained, **kwargs)
    model = build_model(name, num_classes, **kwargs)
    if pretrained:
        model.load_report = load_pretrained(model, pretrained)
    return model


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


def load_detector_checkpoint(path: str | Path, prefer_ema: bool = True,
                             decoder_layers: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A detforge checkpoint -> (model with its weights, the checkpoint dict)."""
    ckpt = load_checkpoint(path)
    if "model_name" not in ckpt:
        raise ValueError(
            f"{path}: not a detforge checkpoint (no 'model_name'); to start from foreign weights use "
            "pretrained=PATH with a model name, e.g. model=dfine-s pretrained=PATH"
        )
    from detforge.models.zoo import build_model

    model = build_model(ckpt["model_name"], int(ckpt["num_classes"]))
    sd = find_state_dict(ckpt, prefer_ema=prefer_ema)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        LOG.warning("%s: %d missing and %d unexpected tensors", path, len(missing), len(unexpected))
    model.eval()
    set_decoder_layers(model, decoder_layers)
    return model, ckpt
