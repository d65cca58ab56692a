"""BatchNorm statistics re-estimated for the weights being evaluated ("precise BN").

During training a BatchNorm layer normalises with the batch's own statistics and keeps a running
average of them for inference. That average trails the weights: it mixes batches seen under
older weights (momentum 0.1: about the last ten steps), all of them augmented the training way
(with ``mosaic=1.0`` every one a four-image mosaic). Early in a from-scratch run the weights move
fast, and a validation can then score a sound model at ~0: on BCCD-WBC (D-FINE-N, 416 px,
seed 2) the epoch-7 checkpoint scored 0.006 mAP50-95 as saved and 0.481 once its statistics
were re-measured here, with the weights untouched (benchmarks/RESULTS.md, "BatchNorm statistics
re-measured before each validation").

``recalibrate_batchnorm`` replaces every BatchNorm layer's running mean and variance by the
pooled per-channel mean and variance of its inputs over the given images, computed layer after
layer in one pass (each layer normalises with the batch's statistics, as in training, so the
layers below see what they would in training). The rest of the model runs in eval mode, so a
detector needs no targets. Written here rather than taken from ``torch.optim.swa_utils.update_bn``,
which puts the whole model in train mode (detectors then want targets; SyncBatchNorm would
start collectives) and averages per-batch variances instead of pooling them.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The layers whose running statistics inference uses (frozen norms are not _BatchNorm)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | None = None,
                          amp_dtype: torch.dtype | None = None) -> int:
    """Set each BatchNorm layer's running statistics to its inputs' pooled statistics over
    ``batches`` (model inputs, uint8 0-255 or float 0-1). Returns the number of images used."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    sums: dict[nn.Module, list] = {m: [0, 0.0, 0.0] for m in layers}  # elements per channel, sum x, sum x^2

    def batch_stats_forward(m: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        dims = [0, *range(2, xf.dim())]
        acc = sums[m]
        acc[0] += xf.numel() // xf.shape[1]
        acc[1] = acc[1] + xf.sum(dims).double()
        acc[2] = acc[2] + xf.square().sum(dims).double()
        return F.batch_norm(x, None, None, m.weight, m.bias, training=True, momentum=0.0, eps=m.eps)

    was_training = model.training
    model.eval()
    for m in layers:  # an instance attribute shadows the class's forward until deleted
        m.forward = batch_stats_forward.__get__(m)
    ctx = torch.autocast(device.type, dtype=amp_dtype) if (amp_dtype is not None and device is not None) else nullcontext()
    images = 0
    try:
        for x in batches:
            if device is not None:
                x = x.to(device, non_blocking=True)
            x = x.float().div_(255) if not x.is_floating_point() else x.float()
            with ctx:
                model(x)
            images += x.shape[0]
    finally:
        for m in layers:
            del m.forward
        model.train(was_training)
    if images == 0:
        return 0
    for m in layers:
        n, s, sq = sums[m]
        if n == 0:  # a layer the forward never reached keeps its statistics
            continue
        mean = s / n
        var = (sq / n - mean.square()).clamp_min(0.0) * (n / max(n - 1, 1))  # unbiased, as BatchNorm keeps it
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    return images
