"""Building blocks of the BiFPN and the heads, with the official TensorFlow settings:
BatchNorm eps 1e-3 and decay 0.99 (PyTorch momentum 0.01), swish (SiLU) activations,
depthwise-separable 3x3 convolutions whose pointwise conv keeps its bias even when a BatchNorm
follows (the published weights have that bias, so the layout keeps it)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (bias) -> optional BatchNorm; no activation."""

    def __init__(self, c_in: int, c_out: int, norm: bool = True) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=True)
        self.bn: nn.Module = batch_norm(c_out) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pw(self.dw(x)))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.pw = fuse_bn_into(self.pw, self.bn)
            self.bn = nn.Identity()


class Projection(nn.Module):
    """1x1 conv (bias) + BatchNorm: brings a backbone level to the BiFPN width."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=True)
        self.bn: nn.Module = batch_norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def fuse(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_bn_into(self.conv, self.bn)
            self.bn = nn.Identity()


def fuse_bn_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing bn(conv(x)) with the BatchNorm's running statistics."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    w, b = fuse_conv_bn_weights(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(),
                                bn.running_mean, bn.running_var, bn.eps, bn.weight.detach(), bn.bias.detach())
    fused.weight.data.copy_(w)
    fused.bias.data.copy_(b)
    return fused


def _fans(w: torch.Tensor, groups: int) -> tuple[int, int]:
    receptive = w[0, 0].numel()
    return w.shape[1] * receptive, w.shape[0] * receptive // groups


@torch.no_grad()
def glorot_uniform_(conv: nn.Conv2d) -> None:
    """TensorFlow's default kernel init (fan average, uniform), as the official BiFPN uses."""
    fan_in, fan_out = _fans(conv.weight, conv.groups)
    limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2))
    conv.weight.uniform_(-limit, limit)
    if conv.bias is not None:
        conv.bias.zero_()


@torch.no_grad()
def variance_scaling_(conv: nn.Conv2d, bias: float = 0.0) -> None:
    """Normal with std sqrt(1 / fan_in), the official init of the class and box nets."""
    fan_in, _ = _fans(conv.weight, conv.groups)
    conv.weight.normal_(0.0, math.sqrt(1.0 / max(1.0, fan_in)))
    if conv.bias is not None:
        conv.bias.fill_(bias)
