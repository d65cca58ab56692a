"""FCOS head shared by all pyramid levels: a classification tower and a regression tower
(3x3 conv + GroupNorm + SiLU; GroupNorm because the head sees each level separately and
small per-GPU batches), then class logits, ltrb distances and a centerness logit."""

from __future__ import annotations

import math

import torch
from torch import nn

# exp() of larger exponents gives boxes far beyond any input; clamping keeps float32 finite
MAX_LOG_DISTANCE = 12.0


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    groups = min(32, channels // 4)
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.GroupNorm(groups, channels), nn.SiLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    def __init__(self, num_classes: int, channels: int, num_convs: int, strides: tuple[int, ...], prior_prob: float = 0.01) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.cls_tower = _tower(channels, num_convs)
        self.reg_tower = _tower(channels, num_convs)
        self.cls_pred = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.reg_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.ctr_pred = nn.Conv2d(channels, 1, 3, 1, 1)
        # one learnable scale per level: the shared reg conv serves objects of every size
        self.scales = nn.Parameter(torch.ones(len(strides)))
        for m in [*self.cls_tower, *self.reg_tower, self.cls_pred, self.reg_pred, self.ctr_pred]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        # focal-loss prior: start every location at p = prior_prob so the many negatives do not
        # swamp the first steps
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """Per level: ``cls`` [B, HW, C] logits, ``ltrb`` [B, HW, 4] distances in input pixels
        (float32), ``ctr`` [B, HW] centerness logits, ``points`` [HW, 2] cell centres (x, y)."""
        out: dict[str, list[torch.Tensor]] = {"cls": [], "ltrb": [], "ctr": [], "points": []}
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            cls_feat = self.cls_tower(x)
            reg_feat = self.reg_tower(x)
            out["cls"].append(self.cls_pred(cls_feat).flatten(2).transpose(1, 2).float())
            # exp keeps distances positive and gives every location a 2-stride box at the start,
            # so the GIoU gradient is alive from step one
            log_d = (self.reg_pred(reg_feat).float() * self.scales[level].float()).clamp(max=MAX_LOG_DISTANCE)
            out["ltrb"].append(log_d.exp().flatten(2).transpose(1, 2) * stride)
            out["ctr"].append(self.ctr_pred(reg_feat).flatten(1).float())
            out["points"].append(grid_points(x, stride))
        return out


def grid_points(feat: torch.Tensor, stride: int) -> torch.Tensor:
    """Centres (x, y) of the cells of ``feat`` [B, C, H, W] in input pixels, [H*W, 2], row-major.
    Built from the map's own size, so any input size works and exports stay size-agnostic."""
    h, w = feat.shape[-2:]
    ys = torch.arange(h, device=feat.device, dtype=torch.float32) * stride + stride // 2
    xs = torch.arange(w, device=feat.device, dtype=torch.float32) * stride + stride // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
