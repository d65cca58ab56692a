"""The two Darknet backbones of the YOLOv3 cfgs.

- ``Darknet53`` (yolov3.cfg, yolov3-spp.cfg): a 3x3 stem of 32 channels, then five stages, each
  a stride-2 3x3 conv doubling the channels and 1, 2, 8, 8, 4 residual units. The stride 8, 16
  and 32 outputs (256, 512, 1024 channels; Darknet layers 36, 61, 74) feed the neck.
- ``TinyDarknet`` (yolov3-tiny.cfg): seven 3x3 convs of 16..1024 channels with a 2x2 max-pool
  after each of the first six (the sixth with stride 1, so the map stays at stride 32). The
  stride 16 (256 channels, layer 8) and stride 32 (1024 channels, layer 12) outputs feed the neck.
"""

from __future__ import annotations

import torch
from torch import nn

from detforge.models.yolov3.blocks import ConvBNLeaky, DarknetMaxPool, Residual
from detforge.models.yolov3.darknet_cfg import DarknetLayout

DARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))  # (channels, residual units)
TINY_WIDTHS = (16, 32, 64, 128, 256, 512, 1024)


class Darknet53(nn.Module):
    out_channels = (256, 512, 1024)
    out_strides = (8, 16, 32)

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNLeaky(3, 32, 3)
        stages, c_in = [], 32
        for c, n in DARKNET53_STAGES:
            stages.append(nn.Sequential(ConvBNLeaky(c_in, c, 3, 2), *[Residual(c) for _ in range(n)]))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """-> [stride 8, stride 16, stride 32] maps."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                outs.append(x)
        return outs

    def emit(self, layout: DarknetLayout) -> list[int]:
        """Append the backbone's sections; -> Darknet indices of the three outputs."""
        layout.conv(self.stem)
        taps = []
        for i, stage in enumerate(self.stages):
            layout.conv(stage[0])
            for unit in stage[1:]:
                start = layout.last
                layout.conv(unit.cv1)
                layout.conv(unit.cv2)
                layout.shortcut(start)
            if i >= 2:
                taps.append(layout.last)
        return taps


class TinyDarknet(nn.Module):
    out_channels = (256, 1024)
    out_strides = (16, 32)

    def __init__(self) -> None:
        super().__init__()
        convs, c_in = [], 3
        for c in TINY_WIDTHS:
            convs.append(ConvBNLeaky(c_in, c, 3))
            c_in = c
        self.convs = nn.ModuleList(convs)
        # after convs 0..5: five stride-2 pools to stride 32, then a stride-1 pool
        self.pools = nn.ModuleList([DarknetMaxPool(2, 2) for _ in range(5)] + [DarknetMaxPool(2, 1)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """-> [stride 16, stride 32] maps."""
        outs = []
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i == 4:
                outs.append(x)
            if i < len(self.pools):
                x = self.pools[i](x)
        outs.append(x)
        return outs

    def emit(self, layout: DarknetLayout) -> list[int]:
        taps = []
        for i, conv in enumerate(self.convs):
            layout.conv(conv)
            if i == 4:
                taps.append(layout.last)
            if i < len(self.pools):
                layout.maxpool(self.pools[i].size, self.pools[i].stride)
        taps.append(layout.last)
        return taps
