"""Darknet ``.weights`` files: read into a YOLOv3 model, write from one.

The format (Darknet's ``save_weights`` / ``load_weights``): a header of int32 major, minor,
revision, then the count of images seen in training, int64 when major * 10 + minor >= 2 (and
both are below 1000), int32 otherwise; then float32 values, conv layer by conv layer in cfg
order: with ``batch_normalize=1`` the BN bias (beta), scale (gamma), running mean and running
variance, then the conv weights [filters, channels, size, size]; without BN the conv bias, then
the weights. No shapes are stored: the cfg gives them, here ``model.darknet_layout()``.

A file trained for another class count differs only in the output convs; its class count
follows from its length, and those convs are skipped (and reported) while every other conv
loads. ASFF layers are not in Darknet's cfgs: they keep their initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detforge.models.yolov3.blocks import ConvBNLeaky

LOG = logging.getLogger("detforge")
# what ``save_darknet_weights`` writes: version 0.2.0 (int64 "seen")
WRITE_VERSION = (0, 2, 0)


def read_header(data: bytes, path: str = "") -> tuple[dict[str, int], int]:
    """-> (header fields, byte offset of the first float)."""
    if len(data) < 16:
        raise ValueError(f"{path}: {len(data)} bytes is too short for a Darknet .weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, np.int32, 3))
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        seen, offset = int(np.frombuffer(data, np.int64, 1, 12)[0]), 20
    else:
        seen, offset = int(np.frombuffer(data, np.int32, 1, 12)[0]), 16
    return {"major": major, "minor": minor, "revision": revision, "seen": seen}, offset


def _conv_sizes(module: nn.Module) -> list[int]:
    """Float counts of one [convolutional], in file order."""
    conv = module.conv if isinstance(module, ConvBNLeaky) else module
    f = conv.out_channels
    return ([f] * 4 if isinstance(module, ConvBNLeaky) else [f]) + [conv.weight.numel()]


def _file_classes(model, convs: list[nn.Module], num_floats: int, path: str) -> int:
    """The class count a file of ``num_floats`` values holds for this model's layout."""
    outputs = [m for m in convs if not isinstance(m, ConvBNLeaky)]
    fixed = sum(sum(_conv_sizes(m)) for m in convs if isinstance(m, ConvBNLeaky))
    a = model.anchors_per_level
    per_class = sum((m.in_channels + 1) * a for m in outputs)
    const = 5 * per_class
    classes, rest = divmod(num_floats - fixed - const, per_class)
    if rest or classes < 1:
        expected = f"{fixed + const + per_class} + {per_class} per class"
        raise ValueError(f"{path}: {num_floats} weights after the header do not fit {model.size} "
                         f"({expected}); is it a file for another model (yolov3 / yolov3-spp / yolov3-tiny)?")
    return int(classes)


def load_darknet_weights(model, path: str | Path) -> dict[str, Any]:
    """Fill ``model``'s Darknet convs from ``path``; returns what was loaded and skipped."""
    path = str(path)
    data = Path(path).read_bytes()
    header, offset = read_header(data, path)
    if (len(data) - offset) % 4:
        raise ValueError(f"{path}: {len(data) - offset} bytes after the header are not whole float32 values")
    values = np.frombuffer(data, np.float32, offset=offset)
    convs = model.darknet_layout().convs()
    file_classes = _file_classes(model, convs, len(values), path)
    same_classes = file_classes == model.num_classes
    pos, loaded, skipped, params = 0, 0, 0, 0
    for module in convs:
        is_output = not isinstance(module, ConvBNLeaky)
        sizes = _conv_sizes(module)
        if is_output and not same_classes:
            # the file's output conv for its own class count: step over it
            filters = model.anchors_per_level * (5 + file_classes)
            pos += filters + filters * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            skipped += 1
            continue
        chunks = []
        for n in sizes:
            chunks.append(torch.from_numpy(values[pos : pos + n].copy()))
            pos += n
        if isinstance(module, ConvBNLeaky):
            if not module.has_bn:
                raise ValueError("load Darknet weights before deploy(): the BatchNorm layers are already fused")
            bn = module.bn
            targets = [bn.bias, bn.weight, bn.running_mean, bn.running_var, module.conv.weight]
        else:
            targets = [module.bias, module.weight]
        with torch.no_grad():
            for t, chunk in zip(targets, chunks):
                t.copy_(chunk.view_as(t))
        loaded += 1
        params += sum(sizes)
    if pos != len(values):  # cannot happen once the class count fitted; kept as a guard
        raise ValueError(f"{path}: read {pos} of {len(values)} weights")
    report = {"source": path, "header": header, "file_classes": file_classes, "loaded_convs": loaded,
              "skipped_convs": skipped, "total_convs": len(convs), "values": params}
    msg = (f"Darknet weights {path} (v{header['major']}.{header['minor']}.{header['revision']}, "
           f"{header['seen']} images seen): loaded {loaded}/{len(convs)} convs ({params} values)")
    if skipped:
        msg += f"; skipped the {skipped} output convs (file: {file_classes} classes, model: {model.num_classes})"
    if getattr(model, "asff", None) is not None:
        asff_params = sum(p.numel() for p in model.asff.parameters())
        msg += f"; ASFF ({asff_params} params) is not in Darknet files and starts from its initialisation"
    LOG.info(msg)
    return report


def save_darknet_weights(model, path: str | Path, seen: int = 0) -> Path:
    """Write ``model``'s Darknet convs to ``path`` in the format ``load_darknet_weights`` reads."""
    if getattr(model, "asff", None) is not None:
        raise ValueError("ASFF layers have no Darknet form: a model with asff=true cannot be written as .weights")
    parts = [np.array(WRITE_VERSION, np.int32).tobytes(), np.array([seen], np.int64).tobytes()]
    for module in model.darknet_layout().convs():
        if isinstance(module, ConvBNLeaky):
            if not module.has_bn:
                raise ValueError("write Darknet weights before deploy(): the BatchNorm layers are fused")
            tensors = [module.bn.bias, module.bn.weight, module.bn.running_mean, module.bn.running_var, module.conv.weight]
        else:
            tensors = [module.bias, module.weight]
        parts.extend(t.detach().cpu().float().numpy().astype(np.float32).tobytes() for t in tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


def load_weights(model, path: str | Path) -> dict[str, Any]:
    """``pretrained=PATH`` for YOLOv3's published files: Darknet ``.weights`` (detforge
    checkpoints never reach here: the engine loads those by name and shape)."""
    if Path(path).suffix.lower() != ".weights":
        from detforge.errors import CheckpointError

        raise CheckpointError(f"{path}: YOLOv3 reads Darknet .weights files or detforge checkpoints; "
                              "this is neither")
    return load_darknet_weights(model, path)
