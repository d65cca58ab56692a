"""Load the reference PyTorch port's EfficientDet weights (effdet, rwightman/efficientdet-pytorch:
the ``tf_efficientdet_d0..d3`` files ported from the official TensorFlow checkpoints, or a
state dict saved from ``effdet.create_model``); nothing is downloaded here.

``NAME_MAP`` is the one table between effdet's parameter names and detforge's; every rule works
in both directions (``to_detforge`` / ``to_effdet``), and the tests check the round trip on
every tensor of every size. Fields in braces are translated by ``FIELDS`` (effdet's node and
input numbers -> detforge's node and level names; effdet's [repeat][level] head BatchNorm order
-> detforge's [level][repeat]); ``{rest}`` is copied as it is.

A different class count changes only the class net's output (pointwise) conv: it keeps its
fresh initialisation and the report says so. Any other shape difference means the file is for
another size, and it is refused with the first differences named.

timm's ImageNet ``tf_efficientnet_bN`` files (``pretrained=imagenet``) hold the backbone alone,
under the backbone's own names (no ``backbone.`` prefix): they fill the backbone, their
classification layers (conv_head, bn2, classifier) are left out, and the BiFPN and heads keep
their initialisation.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detforge.errors import CheckpointError
from detforge.models.efficientdet.bifpn import LEVELS, NODES
from detforge.weights_file import read_checkpoint, strip_prefix

log = logging.getLogger("detforge")

# (effdet name, detforge name)
NAME_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.{rest}", "backbone.{rest}"),
    ("fpn.resample.3.conv.conv.{rest}", "neck.p6_proj.conv.{rest}"),
    ("fpn.resample.3.conv.bn.{rest}", "neck.p6_proj.bn.{rest}"),
    ("fpn.cell.{layer}.fnode.{node}.combine.edge_weights", "neck.layers.{layer}.nodes.{node}.weights"),
    ("fpn.cell.{layer}.fnode.{node}.combine.resample.{src}.conv.conv.{rest}",
     "neck.layers.{layer}.nodes.{node}.proj.{src}.conv.{rest}"),
    ("fpn.cell.{layer}.fnode.{node}.combine.resample.{src}.conv.bn.{rest}",
     "neck.layers.{layer}.nodes.{node}.proj.{src}.bn.{rest}"),
    ("fpn.cell.{layer}.fnode.{node}.after_combine.conv.conv_dw.{rest}", "neck.layers.{layer}.nodes.{node}.conv.dw.{rest}"),
    ("fpn.cell.{layer}.fnode.{node}.after_combine.conv.conv_pw.{rest}", "neck.layers.{layer}.nodes.{node}.conv.pw.{rest}"),
    ("fpn.cell.{layer}.fnode.{node}.after_combine.conv.bn.{rest}", "neck.layers.{layer}.nodes.{node}.conv.bn.{rest}"),
    ("{net}.conv_rep.{rep}.conv_dw.{rest}", "{head}.convs.{rep}.dw.{rest}"),
    ("{net}.conv_rep.{rep}.conv_pw.{rest}", "{head}.convs.{rep}.pw.{rest}"),
    ("{net}.bn_rep.{rep}.{level}.bn.{rest}", "{head}.norms.{level}.{rep}.{rest}"),
    ("{net}.predict.conv_dw.{rest}", "{head}.pred.dw.{rest}"),
    ("{net}.predict.conv_pw.{rest}", "{head}.pred.pw.{rest}"),
)

# field -> (effdet spelling, detforge spelling), position by position; fields not listed are
# numbers copied as they are
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # effdet numbers the BiFPN nodes in build order, which is NODES' order
    "node": (tuple(str(i) for i in range(len(NODES))), tuple(NODES)),
    # effdet names a node input by its index among all maps of the layer: 0..4 are P3..P7
    "src": (tuple(str(i) for i in range(3)), LEVELS[:3]),
}
# the head nets: the same field under two names ({net} in effdet names, {head} in detforge's)
HEADS = (("class_net", "class_head"), ("box_net", "box_head"))

_DETECTOR_PREFIXES = ("backbone.", "fpn.", "class_net.", "box_net.")
# an ImageNet classifier's layers after the last block, which the detector's backbone lacks
_CLASSIFIER_PREFIXES = ("backbone.conv_head.", "backbone.bn2.", "backbone.classifier.")
# the class net's output conv: its shape follows the class count
CLASS_OUTPUT = "class_head.pred.pw."
BENIGN_SUFFIXES = ("num_batches_tracked",)


def _pattern(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()])
        name = m.group(1)
        out += rf"(?P<{name}>.+)" if name == "rest" else rf"(?P<{name}>[^.]+)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


_RULES = [(_pattern(a), a, _pattern(b), b) for a, b in NAME_MAP]


def _convert(fields: dict[str, str], to_detforge: bool) -> dict[str, str] | None:
    out = dict(fields)
    src_i, dst_i = (0, 1) if to_detforge else (1, 0)
    for name, spellings in FIELDS.items():
        if name in out:
            if out[name] not in spellings[src_i]:
                return None
            out[name] = spellings[dst_i][spellings[src_i].index(out[name])]
    net_in, net_out = ("net", "head") if to_detforge else ("head", "net")
    if net_in in out:
        pairs = {h[src_i]: h[dst_i] for h in HEADS}
        if out[net_in] not in pairs:
            return None
        out[net_out] = pairs[out.pop(net_in)]
    for name, value in out.items():
        if name not in ("rest", "head", "net") and name not in FIELDS and not value.isdigit():
            return None
    return out


def _translate(key: str, to_detforge: bool) -> str | None:
    for eff_re, eff_t, det_re, det_t in _RULES:
        src_re, dst_t = (eff_re, det_t) if to_detforge else (det_re, eff_t)
        m = src_re.match(key)
        if m:
            fields = _convert(m.groupdict(), to_detforge)
            if fields is not None:
                return dst_t.format(**fields)
    return None


def to_detforge(key: str) -> str | None:
    """effdet parameter name -> detforge's, or None when no rule covers it."""
    return _translate(key, to_detforge=True)


def to_effdet(key: str) -> str | None:
    """detforge parameter name -> effdet's, or None when no rule covers it."""
    return _translate(key, to_detforge=False)


def effdet_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights in an effdet file: a plain state dict (the published files), or a training
    checkpoint of its train script ('state_dict_ema' preferred, then 'state_dict', whose names
    carry the training wrapper's ``model.`` prefix)."""
    for key in ("state_dict_ema", "state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"no effdet weights found (top-level keys: {sorted(map(str, obj))[:10]})")
    sd = strip_prefix(obj)
    if all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return sd


def load_effdet(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy an effdet checkpoint (or a timm ImageNet backbone file) into ``model`` through ``NAME_MAP``.

    Returns ``{"path", "part" ('detector' | 'backbone'), "loaded": [detforge names], "skipped":
    {name: reason}, "missing": [names], "unexpected": [file names]}`` and logs a summary. Raises CheckpointError for a file with no
    effdet tensors, and ValueError for a file of another size."""
    path = Path(path)
    try:
        source = effdet_state_dict(read_checkpoint(path))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    part = "detector"
    if "conv_stem.weight" in source and not any(k.startswith(_DETECTOR_PREFIXES) for k in source):
        part = "backbone"
        source = {f"backbone.{k}": v for k, v in source.items()}
    target = model.state_dict()
    updates: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    wrong: list[str] = []
    unexpected: list[str] = []
    for eff_name, tensor in source.items():
        name = to_detforge(eff_name)
        if name is None or name not in target:
            unused_head = part == "backbone" and eff_name.startswith(_CLASSIFIER_PREFIXES)
            if not eff_name.endswith(BENIGN_SUFFIXES) and not unused_head:
                unexpected.append(eff_name)
            continue
        if tensor.shape != target[name].shape:
            reason = f"shape {tuple(tensor.shape)} in file vs {tuple(target[name].shape)} in model"
            if name.startswith(CLASS_OUTPUT):
                skipped[name] = reason + " (class count differs: this output conv starts fresh)"
            else:
                wrong.append(f"{eff_name}: {reason}")
            continue
        updates[name] = tensor
    if wrong:
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise ValueError(f"{path}: {len(wrong)} tensors do not fit {getattr(model, 'model_name', 'this model')}, "
                         f"so the file is probably for another EfficientDet size: {'; '.join(wrong[:3])}{more}")
    if not updates:
        raise CheckpointError(f"{path}: none of its {len(source)} tensors has an effdet EfficientDet name")
    model.load_state_dict(updates, strict=False)
    missing = [k for k in target if k not in updates and k not in skipped and not k.endswith(BENIGN_SUFFIXES)
               and not (part == "backbone" and not k.startswith("backbone."))]
    report = {"path": str(path), "part": part, "loaded": sorted(updates), "skipped": skipped, "missing": missing,
              "unexpected": unexpected}
    log.info("%s: loaded %d %s tensors; %d skipped, %d missing, %d unexpected", path, len(updates),
             "effdet" if part == "detector" else "ImageNet backbone", len(skipped), len(missing), len(unexpected))
    if part == "backbone":
        log.info("%s: an ImageNet backbone file: the BiFPN and the class and box nets start fresh", path)
    if skipped:
        log.info("%s: the class count differs, so the class net's output conv (%s) starts fresh; "
                 "every other tensor is loaded", path, ", ".join(sorted(skipped)))
    for label, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            log.warning("%s: %d %s tensors, e.g. %s", path, len(names), label, ", ".join(names[:5]))
    return report
