"""A training-only per-cell class head on the encoder's maps (``dense_cls`` = weight).

D-FINE learns an object's class only through its queries: one-to-one matching gives each object
one positive query per decoder layer, and the class reaches the backbone and encoder through that
query's sampling points. On images with one or two objects that is a thin signal, and from
scratch a DETR finds objects well before it names them (benchmarks/RESULTS.md, "where the start
is lost"). This head asks every encoder cell whose centre lies in the middle of an object which
class it is, as FCOS's classification branch does (arXiv 1904.01355; Co-DETR, arXiv 2211.12860,
adds such dense heads beside a DETR's encoder for the same reason): tens of positives per object
and step, fixed by geometry rather than by the model's own matching, reaching the features that
the query selection and the decoder read. Nothing else reads its output; ``DFine.deploy`` drops
it, so eval, export and the deploy graph are those of the same weights without it.

Written here because no library offers this assignment over a DETR's encoder maps; the focal
loss itself is torchvision's. detforge's ATSS assigner (models/fcos/assigner.py) is not used: it
keeps the few cells per object best placed to regress its box, where this head wants every cell
in the object's middle to read the class.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

# cells whose centre falls within this fraction of the box's width and height, around its centre,
# are positives (FCOS's centre sampling in relative form); the cell holding the centre always is
CENTRAL_FRACTION = 0.5
# initial positive probability (the usual focal-loss prior: the head starts predicting background)
PRIOR_PROB = 0.01


class DenseClassHead(nn.Module):
    """One 3x3 conv-GN-SiLU then a 1x1 conv to class logits, shared over the encoder's levels."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.tower = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(min(32, dim), dim), nn.SiLU())
        self.logits = nn.Conv2d(dim, self.num_classes, 1)
        nn.init.constant_(self.logits.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        """[B, C, H, W] per level -> [B, K, H, W] per level."""
        return [self.logits(self.tower(m)) for m in maps]


def dense_class_targets(targets: list[dict[str, Tensor]], shapes: list[tuple[int, int]], num_classes: int,
                        central: float = CENTRAL_FRACTION) -> Tensor:
    """[B, sum(H*W), K] 0/1 targets for cells of maps of ``shapes`` (H, W) covering the image.

    ``targets`` hold normalised cxcywh ``boxes`` and ``labels``. A cell is positive for an
    object's class when its centre lies inside the box shrunk to ``central`` of its width and
    height, or when it holds the box centre; a cell inside two objects of different classes is
    positive for both."""
    device = targets[0]["boxes"].device if targets else torch.device("cpu")
    centres, cells = [], []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack([cx.reshape(-1), cy.reshape(-1)], 1))
        cells.append(torch.tensor([w, h], device=device, dtype=torch.float32).expand(h * w, 2))
    centre = torch.cat(centres)  # [N, 2] normalised
    size = torch.cat(cells)  # [N, 2] cells per image side, per cell's level
    out = torch.zeros(len(targets), len(centre), num_classes, device=device)
    for i, t in enumerate(targets):
        boxes, labels = t["boxes"].reshape(-1, 4).float(), t["labels"].reshape(-1).long()
        if not len(labels):
            continue
        offset = (centre[:, None, :] - boxes[None, :, :2]).abs()  # [N, M, 2]
        inside = (offset <= boxes[None, :, 2:] * (central / 2)).all(-1)
        # the cell holding the centre: its index along each axis equals floor(centre * cells)
        holds = ((centre[:, None, :] * size[:, None, :]).floor() == (boxes[None, :, :2] * size[:, None, :])
                 .floor().clamp(max=size[:, None, :] - 1)).all(-1)
        positive = (inside | holds).float()  # [N, M]
        out[i].index_add_(1, labels, positive)
    return out.clamp_(max=1.0)


def dense_class_loss(logits: list[Tensor], targets: list[dict[str, Tensor]], central: float = CENTRAL_FRACTION) -> Tensor:
    """Sigmoid focal loss (alpha 0.25, gamma 2) of every cell and class, summed over the batch
    and divided by the number of positive cell-class pairs (at least 1)."""
    shapes = [tuple(x.shape[-2:]) for x in logits]
    flat = torch.cat([x.float().flatten(2).transpose(1, 2) for x in logits], 1)  # [B, N, K]
    goal = dense_class_targets(targets, shapes, flat.shape[-1], central)
    return sigmoid_focal_loss(flat, goal, alpha=0.25, gamma=2.0, reduction="sum") / goal.sum().clamp(min=1.0)
