"""Load official D-FINE checkpoints (files the user downloaded; nothing is fetched here).

detforge's D-FINE uses the official parameter names, so tensors are matched by name. A different
class count changes only the class heads (and the denoising label embedding); those are skipped
and reported. Any other shape difference means the file is for another size and is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detforge.errors import CheckpointError
from detforge.weights_file import locate_state_dict, read_checkpoint, strip_prefix

log = logging.getLogger("detforge")

# tensors whose first dimension is the class count (num_classes, or num_classes + 1 for the
# denoising label embedding)
CLASS_HEAD_PREFIXES = ("decoder.enc_score_head.", "decoder.dec_score_head.", "decoder.denoising_class_embed.")
# bookkeeping entries that need no report when absent on one side
BENIGN_SUFFIXES = ("num_batches_tracked",)


def load_official(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy the tensors of an official D-FINE checkpoint into ``model`` by name.

    Returns ``{"path", "source" ('ema' | 'model' | 'state_dict'), "loaded": [names],
    "skipped": {name: reason}, "missing": [names], "unexpected": [names]}`` and logs a summary.
    Raises ValueError when nothing matches or when a non-class tensor has another shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"D-FINE checkpoint not found: {path}")
    obj = read_checkpoint(path)
    try:
        source_sd, source = locate_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}; an official D-FINE checkpoint holds 'ema' ({{'module': "
                              "state_dict}) or 'model'") from None
    source_sd = strip_prefix(source_sd)

    target_sd = model.state_dict()
    loaded: list[str] = []
    skipped: dict[str, str] = {}
    wrong_shape: list[str] = []
    updates: dict[str, torch.Tensor] = {}
    for name, current in target_sd.items():
        if name not in source_sd:
            continue
        tensor = source_sd[name]
        if tensor.shape != current.shape:
            reason = f"shape {tuple(tensor.shape)} in file vs {tuple(current.shape)} in model"
            if name.startswith(CLASS_HEAD_PREFIXES):
                skipped[name] = reason + " (class count differs; trained from scratch)"
            else:
                wrong_shape.append(f"{name}: {reason}")
            continue
        updates[name] = tensor
        loaded.append(name)
    if wrong_shape:
        more = f" (and {len(wrong_shape) - 5} more)" if len(wrong_shape) > 5 else ""
        raise ValueError(
            f"{path}: {len(wrong_shape)} tensors do not fit this model, so the file is probably for "
            f"another D-FINE size: {'; '.join(wrong_shape[:5])}{more}"
        )
    if not loaded:
        raise ValueError(f"{path}: none of its {len(source_sd)} tensors match a D-FINE parameter name")

    # strict=False: skipped class heads keep their fresh initialisation
    model.load_state_dict(updates, strict=False)
    missing = [k for k in target_sd if k not in source_sd and not k.endswith(BENIGN_SUFFIXES)]
    unexpected = [k for k in source_sd if k not in target_sd and not k.endswith(BENIGN_SUFFIXES)]
    report = {"path": str(path), "source": source, "loaded": loaded, "skipped": skipped,
              "missing": missing, "unexpected": unexpected}
    log.info("%s: loaded %d tensors from its '%s' weights; skipped %d, missing %d, unexpected %d",
             path, len(loaded), source, len(skipped), len(missing), len(unexpected))
    for name, reason in skipped.items():
        log.info("  skipped %s: %s", name, reason)
    if missing:
        log.warning("  %d model tensors are not in the file and keep their initial values: %s",
                    len(missing), ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        log.warning("  %d tensors in the file are not used by this model: %s",
                    len(unexpected), ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    return report
