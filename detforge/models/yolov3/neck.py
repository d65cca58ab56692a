"""The top-down fusion of the YOLOv3 cfgs (an FPN of Darknet convs), coarse level first, as
Darknet computes it.

- ``YOLOv3Neck`` (yolov3.cfg, yolov3-spp.cfg): five alternating 1x1/3x3 convs on the stride-32
  map; its output, through a 1x1 conv to half the channels and a 2x nearest upsample, is
  concatenated (upsampled first) with the stride-16 backbone map, and so on down to stride 8.
  Outputs have 512, 256, 128 channels. ``spp=True`` puts the SPP block of yolov3-spp.cfg after
  the third conv of the first set: max-pools of 5, 9 and 13 (stride 1) concatenated as
  [pool13, pool9, pool5, input], then a 1x1, a 3x3 and a 1x1 conv.
- ``TinyNeck`` (yolov3-tiny.cfg): a 1x1 conv to 256 channels on the stride-32 map; through a
  1x1 conv to 128 and an upsample, concatenated with the stride-16 backbone map (384 channels).
"""

from __future__ import annotations

import torch
from torch import nn

from detforge.models.yolov3.blocks import ConvBNLeaky, DarknetMaxPool
from detforge.models.yolov3.darknet_cfg import DarknetLayout

SPP_POOLS = (5, 9, 13)


class SPP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pools = nn.ModuleList(DarknetMaxPool(k, 1) for k in SPP_POOLS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([pool(x) for pool in reversed(self.pools)] + [x], dim=1)

    def emit(self, layout: DarknetLayout) -> None:
        source = layout.last
        pooled = []
        for i, pool in enumerate(self.pools):
            if i:
                layout.route(source)
            pooled.append(layout.maxpool(pool.size, pool.stride))
        layout.route(*reversed(pooled), source)


class ConvSet(nn.Module):
    """1x1 c, 3x3 2c, 1x1 c, 3x3 2c, 1x1 c; with ``spp``: 1x1 c, 3x3 2c, 1x1 c, SPP, 1x1 c,
    3x3 2c, 1x1 c."""

    def __init__(self, c_in: int, c: int, spp: bool = False) -> None:
        super().__init__()
        kernels = (1, 3, 1, 1, 3, 1) if spp else (1, 3, 1, 3, 1)
        convs, prev = [], c_in
        for i, k in enumerate(kernels):
            if spp and i == 3:
                prev = (len(SPP_POOLS) + 1) * prev
            out = 2 * c if k == 3 else c
            convs.append(ConvBNLeaky(prev, out, k))
            prev = out
        self.convs = nn.ModuleList(convs)
        self.spp = SPP() if spp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            if self.spp is not None and i == 3:
                x = self.spp(x)
            x = conv(x)
        return x

    def emit(self, layout: DarknetLayout) -> None:
        for i, conv in enumerate(self.convs):
            if self.spp is not None and i == 3:
                self.spp.emit(layout)
            layout.conv(conv)


class YOLOv3Neck(nn.Module):
    out_channels = (512, 256, 128)

    def __init__(self, in_channels: tuple[int, int, int] = (256, 512, 1024), spp: bool = False) -> None:
        super().__init__()
        c8, c16, c32 = in_channels
        w32, w16, w8 = self.out_channels
        self.sets = nn.ModuleList([ConvSet(c32, w32, spp), ConvSet(w32 // 2 + c16, w16), ConvSet(w16 // 2 + c8, w8)])
        self.laterals = nn.ModuleList([ConvBNLeaky(w32, w32 // 2, 1), ConvBNLeaky(w16, w16 // 2, 1)])
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """[stride 8, 16, 32] backbone maps -> [stride 32, 16, 8] fused maps."""
        c8, c16, c32 = feats
        x = self.sets[0](c32)
        outs = [x]
        for lateral, conv_set, skip in zip(self.laterals, self.sets[1:], (c16, c8)):
            x = conv_set(torch.cat([self.up(lateral(x)), skip], dim=1))
            outs.append(x)
        return outs


class TinyNeck(nn.Module):
    out_channels = (256, 384)

    def __init__(self, in_channels: tuple[int, int] = (256, 1024)) -> None:
        super().__init__()
        c16, c32 = in_channels
        self.reduce = ConvBNLeaky(c32, 256, 1)
        self.lateral = ConvBNLeaky(256, 128, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """[stride 16, 32] backbone maps -> [stride 32, 16] fused maps."""
        c16, c32 = feats
        x = self.reduce(c32)
        return [x, torch.cat([self.up(self.lateral(x)), c16], dim=1)]
