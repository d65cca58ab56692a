"""BiFPN (EfficientDet, Tan et al. 2020, section 3): repeated top-down + bottom-up fusion of
P3..P7 with fast normalized fusion, O = sum_i (relu(w_i) / (eps + sum_j relu(w_j))) * I_i, each
fusion followed by swish and a depthwise-separable conv + BatchNorm.

Layout of one layer, as in the official implementation (node names are the module names):
  td6 = fuse(P6, up(P7))        td5 = fuse(P5, up(td6))       td4 = fuse(P4, up(td5))
  out3 = fuse(P3, up(td4))      out4 = fuse(P4, td4, down(out3))
  out5 = fuse(P5, td5, down(out4))  out6 = fuse(P6, td6, down(out5))  out7 = fuse(P7, down(out6))
In the first layer P3..P5 are backbone maps of other widths: every node that reads one has its
own 1x1 conv + BatchNorm projection (so P4 and P5 are projected twice, once per path, as the
published weights have it). Down-sampling is a 3x3 stride-2 max pool with TensorFlow 'SAME'
padding; up-sampling is nearest to the exact size of the finer map, so any input size works
(odd map sizes included) and exported graphs stay size-agnostic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import create_pool2d
from torch import nn

from detforge.models.efficientdet.blocks import Projection, SeparableConv, glorot_uniform_

LEVELS = ("p3", "p4", "p5", "p6", "p7")
# node name -> (output level index, inputs); an input is a level name (this layer's input map)
# or the name of an earlier node of the same layer
NODES: dict[str, tuple[int, tuple[str, ...]]] = {
    "td6": (3, ("p6", "p7")),
    "td5": (2, ("p5", "td6")),
    "td4": (1, ("p4", "td5")),
    "out3": (0, ("p3", "td4")),
    "out4": (1, ("p4", "td4", "out3")),
    "out5": (2, ("p5", "td5", "out4")),
    "out6": (3, ("p6", "td6", "out5")),
    "out7": (4, ("p7", "out6")),
}
OUTPUTS = ("out3", "out4", "out5", "out6", "out7")
FUSION_EPS = 1e-4


def same_max_pool() -> nn.Module:
    """3x3 stride-2 max pool padded like TensorFlow 'SAME' (extra padding right/bottom, -inf)."""
    return create_pool2d("max", kernel_size=3, stride=2, padding="same")


def _level(name: str) -> int:
    return LEVELS.index(name) if name in LEVELS else NODES[name][0]


class FusionNode(nn.Module):
    def __init__(self, name: str, channels: int, in_channels: dict[str, int]) -> None:
        super().__init__()
        self.level, self.inputs = NODES[name]
        # one weight per input, ones at start: a plain average
        self.weights = nn.Parameter(torch.ones(len(self.inputs)))
        self.proj = nn.ModuleDict({
            src: Projection(in_channels[src], channels)
            for src in self.inputs if src in in_channels and in_channels[src] != channels
        })
        self.pool = same_max_pool()
        self.act = nn.SiLU()
        self.conv = SeparableConv(channels, channels)

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        target = maps[LEVELS[self.level]]
        w = F.relu(self.weights.to(target.dtype))
        total = w.sum() + FUSION_EPS
        fused = None
        for i, src in enumerate(self.inputs):
            x = maps[src]
            if src in self.proj:
                x = self.proj[src](x)
            level = _level(src)
            if level < self.level:
                x = self.pool(x)
            elif level > self.level:
                x = F.interpolate(x, size=target.shape[-2:], mode="nearest")
            term = x * w[i] / total
            fused = term if fused is None else fused + term
        return self.conv(self.act(fused))


class BiFPNLayer(nn.Module):
    def __init__(self, channels: int, in_channels: dict[str, int]) -> None:
        super().__init__()
        self.nodes = nn.ModuleDict({name: FusionNode(name, channels, in_channels) for name in NODES})

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = dict(zip(LEVELS, feats))
        for name, node in self.nodes.items():
            maps[name] = node(maps)
        return [maps[name] for name in OUTPUTS]


class BiFPN(nn.Module):
    """Backbone P3, P4, P5 -> P6 (1x1 projection of P5 + pool), P7 (pool of P6) -> ``layers``
    BiFPN layers -> five maps of ``channels``."""

    def __init__(self, backbone_channels: tuple[int, int, int], channels: int, layers: int) -> None:
        super().__init__()
        self.p6_proj = Projection(backbone_channels[2], channels)
        self.pool = same_max_pool()
        first = dict(zip(LEVELS, (*backbone_channels, channels, channels)))
        same = dict.fromkeys(LEVELS, channels)
        self.layers = nn.ModuleList(BiFPNLayer(channels, first if i == 0 else same) for i in range(layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                glorot_uniform_(m)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = feats
        p6 = self.pool(self.p6_proj(p5))
        p7 = self.pool(p6)
        out = [p3, p4, p5, p6, p7]
        for layer in self.layers:
            out = layer(out)
        return out
