"""Give a randomly initialised model the kind of values training leaves in its norms and
affine blocks, for latency measurements.

Fresh models hold identities there (BatchNorm mean 0 / var 1 / weight 1 / bias 0, HGNetv2's
learnable affine scale 1 / bias 0), and ONNX Runtime removes a multiply by 1 or an add of 0
from the graph. A trained D-FINE-N keeps those ops, and unfused they cost it ~17 % of its
onnxruntime CPU time (benchmarks/RESULTS.md), so random-init exports flatter any model that
does not fold them. Used for detforge's and the official D-FINE alike (plain torch, no
detforge import: the official export runs in another environment).
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def make_trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)

    def around(t: torch.Tensor, centre: float, spread: float) -> torch.Tensor:
        return centre + spread * (2 * torch.rand(t.shape, generator=g) - 1)

    for module in model.modules():
        if all(hasattr(module, k) for k in ("running_mean", "running_var", "weight", "bias")) and \
                module.running_mean is not None:
            module.running_mean.copy_(around(module.running_mean, 0.0, 0.1))
            module.running_var.copy_(around(module.running_var, 1.0, 0.5))
            module.weight.copy_(around(module.weight, 1.0, 0.2))
            module.bias.copy_(around(module.bias, 0.0, 0.1))
        elif set(dict(module.named_parameters(recurse=False))) == {"scale", "bias"}:  # HGNetv2 affine block
            module.scale.copy_(around(module.scale, 1.0, 0.3))
            module.bias.copy_(around(module.bias, 0.0, 0.1))
    return model
