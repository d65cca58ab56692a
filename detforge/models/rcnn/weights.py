"""``pretrained=PATH`` for the R-CNN family: weight files a user downloaded (nothing is fetched).

Two kinds of file are recognised by their parameter names:

- a torchvision detection checkpoint (e.g. ``fasterrcnn_resnet50_fpn_v2_coco-*.pth``,
  ``maskrcnn_resnet50_fpn_v2_coco-*.pth``, ``fasterrcnn_mobilenet_v3_large_fpn-*.pth``, or the
  ``{"model": ...}`` files of torchvision's detection reference scripts): names
  ``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``, the same as detforge's
  R-CNN models, so tensors are matched by name;
- an ImageNet classification checkpoint of the backbone (torchvision's ``resnet50-*.pth``:
  ``conv1.*``, ``layer1..4.*``, ``fc.*``; ``mobilenet_v3_large-*.pth``: ``features.*``,
  ``classifier.*``): the feature layers map into ``backbone.body.*`` and the classifier is
  left out.

A class count other than the file's (COCO files have 91 = 90 + background) changes only the
predictor heads, ``roi_heads.box_predictor.{cls_score,bbox_pred}`` and
``roi_heads.mask_predictor.mask_fcn_logits``: those keep their fresh initialisation and the
log says so. Any other shape difference means the file belongs to another architecture and
is refused, naming the tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detforge.errors import CheckpointError
from detforge.weights_file import locate_state_dict, read_checkpoint, strip_prefix

LOG = logging.getLogger("detforge")

DETECTION_PREFIXES = ("backbone.body.", "backbone.fpn.", "rpn.", "roi_heads.")
# tensors whose first dimension follows the class count
CLASS_HEAD_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)
BENIGN_SUFFIXES = ("num_batches_tracked",)  # FrozenBatchNorm2d has none; BatchNorm2d does
# ImageNet classification checkpoints: (name that identifies them, prefix -> backbone.body., dropped head)
IMAGENET_LAYOUTS = {
    "resnet50": ("layer1.", {"": "backbone.body."}, ("fc.",)),
    "mobilenet_v3_large": ("features.", {"features.": "backbone.body."}, ("classifier.",)),
}


def _as_detection_names(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict under detforge / torchvision detection names, what the file was)."""
    state = strip_prefix(state, prefixes=("module.", "_orig_mod.", "model."))
    if any(k.startswith(DETECTION_PREFIXES) for k in state):
        return state, "torchvision detection checkpoint"
    for kind, (marker, renames, dropped) in IMAGENET_LAYOUTS.items():
        if any(k.startswith(marker) for k in state):
            out = {}
            for k, v in state.items():
                if k.startswith(dropped):
                    continue
                for old, new in renames.items():
                    if k.startswith(old):
                        out[new + k[len(old):]] = v
                        break
            return out, f"ImageNet {kind} backbone checkpoint"
    raise CheckpointError(
        f"{path}: neither a torchvision detection checkpoint (names backbone.body.*, rpn.*, roi_heads.*) nor an "
        f"ImageNet resnet50 / mobilenet_v3_large checkpoint (layer1.*, features.*); first names: {sorted(state)[:5]}"
    )


def load_torchvision_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy the matching tensors of ``path`` into ``model`` and return a report:
    ``{"path", "kind", "loaded": [names], "skipped": {name: reason}, "missing": [names], "unexpected": [names]}``."""
    path = Path(path)
    obj = read_checkpoint(path)
    try:
        raw, _ = locate_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    source, kind = _as_detection_names(raw, path)

    target = model.state_dict()
    arch = getattr(model, "arch", type(model).__name__)
    updates: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    wrong: list[str] = []
    for name, current in target.items():
        if name not in source:
            continue
        tensor = source[name]
        if tensor.shape != current.shape:
            reason = f"shape {tuple(tensor.shape)} in the file vs {tuple(current.shape)} here"
            if name.startswith(CLASS_HEAD_PREFIXES):
                skipped[name] = reason + " (class count differs: trained from scratch)"
            else:
                wrong.append(f"{name}: {reason}")
            continue
        updates[name] = tensor
    if wrong:
        more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
        raise CheckpointError(
            f"{path}: {len(wrong)} tensors do not fit {arch}, so the file is for another architecture: "
            f"{'; '.join(wrong[:4])}{more}"
        )
    if not updates:
        raise CheckpointError(f"{path}: none of its {len(source)} tensors ({kind}) match a parameter name of {arch}")
    model.load_state_dict(updates, strict=False)

    missing = [k for k in target if k not in source and not k.endswith(BENIGN_SUFFIXES)]
    unexpected = [k for k in source if k not in target and not k.endswith(BENIGN_SUFFIXES)]
    report = {"path": str(path), "kind": kind, "loaded": sorted(updates), "skipped": skipped,
              "missing": missing, "unexpected": unexpected}
    LOG.info("pretrained %s (%s): loaded %d of %d tensors of %s; %d class-head tensors kept fresh, "
             "%d not in the file, %d in the file but not in the model",
             path, kind, len(updates), len(target), arch, len(skipped), len(missing), len(unexpected))
    if skipped:
        LOG.info("  class count differs from the file: %s start from scratch", ", ".join(sorted(skipped)))
    if missing and "detection" in kind:
        LOG.info("  not in the file (fresh): %s%s", ", ".join(missing[:6]), " ..." if len(missing) > 6 else "")
    return report
