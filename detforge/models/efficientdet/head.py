"""The class and box nets: ``layers`` depthwise-separable convs shared by all pyramid levels,
each followed by a BatchNorm of its own per level (statistics differ between levels, so the
official design shares the conv weights but not the normalisation) and swish, then a shared
separable prediction conv with ``num_anchors x outputs`` channels."""

from __future__ import annotations

import math

import torch
from torch import nn

from detforge.models.efficientdet.blocks import SeparableConv, batch_norm, fuse_bn_into, variance_scaling_


class HeadNet(nn.Module):
    def __init__(self, channels: int, layers: int, num_levels: int, num_anchors: int, outputs: int,
                 prior_prob: float | None = None) -> None:
        super().__init__()
        self.outputs = outputs
        self.convs = nn.ModuleList(SeparableConv(channels, channels, norm=False) for _ in range(layers))
        # norms[level][layer]
        self.norms = nn.ModuleList(
            nn.ModuleList(batch_norm(channels) for _ in range(layers)) for _ in range(num_levels)
        )
        self.act = nn.SiLU()
        self.pred = SeparableConv(channels, num_anchors * outputs, norm=False)
        bias = 0.0 if prior_prob is None else -math.log((1 - prior_prob) / prior_prob)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                variance_scaling_(m)
        # focal-loss prior: every anchor starts at p = prior_prob so the negatives do not swamp the start
        variance_scaling_(self.pred.pw, bias=bias)
        self.fused_pw: nn.ModuleList | None = None  # deploy(): per-level pointwise convs with the BN folded in

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level: [B, H*W*A, outputs] (rows ordered y, x, anchor)."""
        out = []
        for level, x in enumerate(feats):
            for i, conv in enumerate(self.convs):
                if self.fused_pw is not None:
                    x = self.fused_pw[level][i](conv.dw(x))
                else:
                    x = self.norms[level][i](conv(x))
                x = self.act(x)
            y = self.pred(x)
            out.append(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, self.outputs))
        return out

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold each level's BatchNorms into a per-level copy of the shared pointwise convs."""
        if self.fused_pw is None:
            self.fused_pw = nn.ModuleList(
                nn.ModuleList(fuse_bn_into(conv.pw, bn) for conv, bn in zip(self.convs, norms))
                for norms in self.norms
            )
