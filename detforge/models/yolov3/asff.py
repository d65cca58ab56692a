"""Adaptively spatial feature fusion (Liu et al. 2019, arXiv 1911.09516), for any number of
pyramid levels whose strides differ by 2 (three for yolov3 / -spp, two for -tiny).

For each output level l, every level n is first brought to l's size and channels:
- the same level: as is;
- a finer level (2x the resolution): a 3x3 stride-2 conv; 4x: a 3x3 stride-2 max-pool, then
  the 3x3 stride-2 conv (the paper's choice, so a 4x step costs one conv, not two);
- a coarser level: a 1x1 conv to l's channels, then nearest upsampling.
Each resized map is compressed by a 1x1 conv to 16 channels; the concatenation goes through a
1x1 conv to one logit per level, and a softmax over the levels gives per-pixel weights that sum
to one. The output is the weighted sum of the resized maps. The paper's closing 3x3 conv is the
YOLOv3 head's own 3x3 conv that follows (as in the official ASFF code, whose "expand" conv has
the head conv's width), so ASFF adds only the resizing and weight layers, and Darknet weights
still fill every conv of the plain model.

Parameters added (for any class count: the head does not change): yolov3 and yolov3-spp
(levels of 512, 256, 128 channels) 2,341,081 (+3.8 %); yolov3-tiny (levels of 256, 384
channels) 1,005,060 (+11.4 %). ``test_asff_parameter_counts`` derives both by hand.
"""

from __future__ import annotations

import torch
from torch import nn

from detforge.models.yolov3.blocks import ConvBNLeaky

COMPRESS_CHANNELS = 16


def _resizer(c_in: int, c_out: int, steps: int) -> nn.Module:
    """Bring a map ``steps`` levels away (positive: finer, negative: coarser) to the target."""
    if steps == 0:
        return nn.Identity()
    if steps < 0:
        return nn.Sequential(ConvBNLeaky(c_in, c_out, 1), nn.Upsample(scale_factor=2 ** -steps, mode="nearest"))
    layers: list[nn.Module] = [nn.MaxPool2d(3, 2, 1) for _ in range(steps - 1)]
    return nn.Sequential(*layers, ConvBNLeaky(c_in, c_out, 3, 2))


class ASFFLevel(nn.Module):
    """Fusion into one output level (index ``level`` of ``channels``, coarse level first)."""

    def __init__(self, channels: tuple[int, ...], level: int) -> None:
        super().__init__()
        c = channels[level]
        self.resize = nn.ModuleList(_resizer(c_n, c, n - level) for n, c_n in enumerate(channels))
        self.compress = nn.ModuleList(ConvBNLeaky(c, COMPRESS_CHANNELS, 1) for _ in channels)
        self.weight_logits = nn.Conv2d(COMPRESS_CHANNELS * len(channels), len(channels), 1)

    def weights_and_inputs(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> per-pixel level weights [B, L, H, W] (softmax over L) and the resized maps."""
        resized = [r(f) for r, f in zip(self.resize, feats)]
        logits = self.weight_logits(torch.cat([c(x) for c, x in zip(self.compress, resized)], dim=1))
        return logits.softmax(dim=1), resized

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        weights, resized = self.weights_and_inputs(feats)
        return sum(weights[:, i : i + 1] * x for i, x in enumerate(resized))


class ASFF(nn.Module):
    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(ASFFLevel(channels, level) for level in range(len(channels)))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [level(feats) for level in self.levels]
