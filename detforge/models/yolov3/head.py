"""YOLOv3 output layers: per level a 3x3 conv (BN, leaky) that doubles the fused channels and a
1x1 conv with bias to A x (5 + classes) channels, as Darknet lays them out: for each of the
level's A anchors the block [tx, ty, tw, th, objectness, class 0 .. class C-1]."""

from __future__ import annotations

import math

import torch
from torch import nn

from detforge.models.yolov3.blocks import ConvBNLeaky

# prior for a from-scratch start (as the YOLO PyTorch ports do): about 8 objects in a 640 px
# image, and a class probability of 0.6 / (C - 0.99), so the first steps are not swamped by
# the many empty cells
PRIOR_OBJECTS_PER_640 = 8.0


class YOLOHead(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], head_channels: tuple[int, ...], num_anchors: int,
                 num_classes: int, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.num_outputs = 5 + num_classes
        self.convs = nn.ModuleList(ConvBNLeaky(c, h, 3) for c, h in zip(in_channels, head_channels))
        self.preds = nn.ModuleList(nn.Conv2d(h, num_anchors * self.num_outputs, 1) for h in head_channels)
        for pred, stride in zip(self.preds, strides):
            bias = pred.bias.detach().view(num_anchors, self.num_outputs)
            bias[:, 4] = math.log(PRIOR_OBJECTS_PER_640 / (640 / stride) ** 2)
            bias[:, 5:] = math.log(0.6 / max(num_classes - 0.99, 0.01))
            pred.bias.data.copy_(bias.view(-1))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """-> one raw map per level, [B, A * (5 + C), H, W] (Darknet's layout)."""
        return [pred(conv(x)) for conv, pred, x in zip(self.convs, self.preds, feats)]
