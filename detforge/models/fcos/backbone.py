"""CSP backbone: a stride-2 stem, four stride-2 stages of C2f blocks, SPPF on top.
Returns the stride 8, 16 and 32 feature maps."""

from __future__ import annotations

import torch
from torch import nn

from detforge.models.fcos.blocks import C2f, SPPF, ConvBNAct


class CSPBackbone(nn.Module):
    def __init__(self, widths: tuple[int, int, int, int, int], depths: tuple[int, int, int, int]) -> None:
        """``widths``: stem and stage channels (strides 2, 4, 8, 16, 32); ``depths``: bottlenecks
        per stage (strides 4, 8, 16, 32)."""
        super().__init__()
        c0, c1, c2, c3, c4 = widths
        d1, d2, d3, d4 = depths
        self.stem = ConvBNAct(3, c0, 3, 2)
        self.stage1 = nn.Sequential(ConvBNAct(c0, c1, 3, 2), C2f(c1, c1, d1))
        self.stage2 = nn.Sequential(ConvBNAct(c1, c2, 3, 2), C2f(c2, c2, d2))
        self.stage3 = nn.Sequential(ConvBNAct(c2, c3, 3, 2), C2f(c3, c3, d3))
        self.stage4 = nn.Sequential(ConvBNAct(c3, c4, 3, 2), C2f(c4, c4, d4), SPPF(c4, c4))
        self.out_channels = (c2, c3, c4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stage1(self.stem(x))
        p3 = self.stage2(x)
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        return [p3, p4, p5]
