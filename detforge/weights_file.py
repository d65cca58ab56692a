"""Reading weight files safely: shared by the engine's checkpoints and the model families'
loaders of official weights (which sit below the engine and cannot import it).

Files load with ``torch.load(weights_only=True)``: a file that needs anything else (a pickled
class, a function) is refused instead of executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from detforge.errors import CheckpointError


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict stored in ``path``; CheckpointError (naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" not in text and "Unsupported class" not in text and "GLOBAL" not in text:
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or not a torch file)") from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors and plain "
            f"values, which could execute code ({_unsupported(text)}). Only load files you "
            "trust; re-save trusted weights as a plain state dict."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def _unsupported(text: str) -> str:
    for line in text.splitlines():
        if "Unsupported" in line or "GLOBAL" in line:
            return line.strip()[:200]
    return text.splitlines()[0][:200]


def locate_state_dict(obj: dict[str, Any], prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """(model weights, the key they were under) in any of the layouts users bring: a detforge
    checkpoint ('ema' / 'model'), an official D-FINE / RT-DETR file ('ema': {'module': sd} or
    'model'), a Lightning 'state_dict', or a plain state dict (key 'state_dict' reported)."""
    order = ("ema", "model", "state_dict", "module") if prefer_ema else ("model", "ema", "state_dict", "module")
    for key in order:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner:
            if "module" in inner and isinstance(inner["module"], dict):
                inner = inner["module"]
            if all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner, key
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "state_dict"
    raise CheckpointError(
        "no model weights found (looked for 'ema', 'model', 'state_dict' or plain tensors; "
        f"top-level keys: {sorted(map(str, obj))[:10]})"
    )


def strip_prefix(sd: dict[str, torch.Tensor], prefixes=("module.", "_orig_mod.")) -> dict[str, torch.Tensor]:
    """Names without the wrappers' prefixes (DDP's ``module.``, torch.compile's ``_orig_mod.``)."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out
