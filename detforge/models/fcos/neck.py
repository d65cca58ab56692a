"""PAN neck: a top-down FPN path (semantics flow to fine levels) followed by a bottom-up path
(localisation flows to coarse levels), then a 1x1 projection of each level to the one width
the shared head needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detforge.models.fcos.blocks import C2f, ConvBNAct


class PAN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, depth: int) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        self.top_down4 = C2f(c5 + c4, c4, depth, shortcut=False)
        self.top_down3 = C2f(c4 + c3, c3, depth, shortcut=False)
        self.down3 = ConvBNAct(c3, c3, 3, 2)
        self.bottom_up4 = C2f(c3 + c4, c4, depth, shortcut=False)
        self.down4 = ConvBNAct(c4, c4, 3, 2)
        self.bottom_up5 = C2f(c4 + c5, c5, depth, shortcut=False)
        self.project = nn.ModuleList(ConvBNAct(c, out_channels, 1) for c in (c3, c4, c5))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = feats
        # nearest x2 upsampling: sizes follow the actual maps, so odd input sizes work too
        t4 = self.top_down4(torch.cat([F.interpolate(p5, size=p4.shape[-2:], mode="nearest"), p4], 1))
        n3 = self.top_down3(torch.cat([F.interpolate(t4, size=p3.shape[-2:], mode="nearest"), p3], 1))
        n4 = self.bottom_up4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.bottom_up5(torch.cat([self.down4(n4), p5], 1))
        return [proj(f) for proj, f in zip(self.project, (n3, n4, n5))]
