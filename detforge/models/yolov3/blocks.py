"""Darknet's building blocks in PyTorch: conv + BatchNorm + leaky ReLU (0.1), the plain output
conv, the residual pair of Darknet-53, and Darknet's max-pool (whose padding differs from
PyTorch's defaults for size 2, stride 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Darknet normalises with sqrt(var) + 1e-6 and OpenCV's Darknet reader with sqrt(var + 1e-6):
# the same small epsilon keeps Darknet weights' outputs Darknet's
BN_EPS = 1e-6
# faster than Darknet's 0.01, as the YOLO PyTorch ports use: short runs on small sets need the
# running statistics to catch up within a few hundred steps
BN_MOMENTUM = 0.03
LEAKY_SLOPE = 0.1


class ConvBNLeaky(nn.Module):
    """A Darknet ``[convolutional]`` with ``batch_normalize=1, activation=leaky``: conv without
    bias ('same' padding, size // 2), BatchNorm, leaky ReLU 0.1. ``fuse()`` folds the norm in."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @property
    def has_bn(self) -> bool:
        # BatchNorm2d, or the SyncBatchNorm that sync_bn=true swaps in under torchrun
        return isinstance(self.bn, _BatchNorm)

    def fuse(self) -> None:
        if self.has_bn:
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()


class Residual(nn.Module):
    """Darknet-53's unit: 1x1 conv to half the channels, 3x3 conv back, ``[shortcut] from=-3``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = ConvBNLeaky(c, c // 2, 1)
        self.cv2 = ConvBNLeaky(c // 2, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class DarknetMaxPool(nn.Module):
    """Darknet's ``[maxpool]``: it pads size - 1 cells in all, floor((size - 1) / 2) of them
    before, the rest after (outside cells never win). Size 2, stride 1 thus keeps the map size
    with one extra cell right and below; odd sizes with stride 1 are PyTorch's symmetric pool."""

    def __init__(self, size: int, stride: int) -> None:
        super().__init__()
        self.size = size
        self.stride = stride
        self.before = (size - 1) // 2
        self.after = size - 1 - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before == self.after:
            return F.max_pool2d(x, self.size, self.stride, self.before)
        # replicated border cells equal -inf padding for a max whose window holds the real border
        x = F.pad(x, (self.before, self.after, self.before, self.after), mode="replicate")
        return F.max_pool2d(x, self.size, self.stride)


def fuse_conv_bn(module: nn.Module) -> int:
    """Fold every ConvBNLeaky's BatchNorm into its conv (eval mode); returns the count."""
    count = 0
    for m in module.modules():
        if isinstance(m, ConvBNLeaky) and m.has_bn:
            m.fuse()
            count += 1
    return count
