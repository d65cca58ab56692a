"""Which anchor of which cell learns each ground-truth box.

YOLOv3 (Redmon & Farhadi 2018) gives each box to the one anchor whose shape overlaps it best
(IoU of (w, h) on a common centre), in the cell that holds the box centre at that anchor's
level. Later YOLO lines add every other anchor whose shape IoU passes a threshold, so a box
between two anchor sizes trains both (AlexeyAB's Darknet ``iou_thresh=0.213``; Ultralytics'
YOLOv3 used 0.20); more positives per box speed up learning on small sets. Both rules are here:
the best anchor always, plus those above ``ANCHOR_IOU_THR``.

Two boxes can want the same anchor of the same cell; the smaller box gets it (larger boxes are
usually also taken by other anchors or levels, small ones rarely are). The choice is by sorting,
so it does not depend on the order of the boxes or on scatter semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ANCHOR_IOU_THR = 0.213


@dataclass
class Positives:
    """One level's positive (image, anchor, cell) triples and what they learn."""

    batch: torch.Tensor  # int64 [P]
    anchor: torch.Tensor  # int64 [P], index among the level's anchors
    gy: torch.Tensor  # int64 [P]
    gx: torch.Tensor  # int64 [P]
    boxes: torch.Tensor  # float32 [P, 4] xyxy input px
    labels: torch.Tensor  # int64 [P]
    weights: torch.Tensor  # float32 [P] (mixup weights, 1 otherwise)


def wh_iou(wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """[N, 2] x [K, 2] -> [N, K] IoU of boxes sharing a centre."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(wh[:, None, 1], anchors[None, :, 1])
    return inter / (wh.prod(1)[:, None] + anchors.prod(1)[None] - inter).clamp(min=1e-12)


def assign_anchors(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    batch_index: torch.Tensor,
    anchors: torch.Tensor,
    anchors_per_level: int,
    level_strides: list[int],
    level_shapes: list[tuple[int, int]],
    iou_thr: float = ANCHOR_IOU_THR,
) -> list[Positives]:
    """Boxes of the whole batch ([G, 4] xyxy px with their labels, weights and image index) ->
    one ``Positives`` per level. ``anchors`` [K, 2] px sorted by area: anchors
    [j*A, (j+1)*A) belong to the j-th finest level; levels are listed coarse first (Darknet's
    output order), so level l holds anchor group L - 1 - l."""
    num_levels = len(level_strides)
    device = boxes.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if len(boxes) == 0:
        return [Positives(empty, empty, empty, empty, boxes.new_zeros(0, 4), empty, boxes.new_zeros(0))
                for _ in range(num_levels)]
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)
    iou = wh_iou(wh, anchors)
    chosen = iou > iou_thr
    chosen[torch.arange(len(boxes), device=device), iou.argmax(1)] = True
    gt, k = chosen.nonzero(as_tuple=True)
    group = torch.div(k, anchors_per_level, rounding_mode="floor")
    level = num_levels - 1 - group
    strides = torch.tensor(level_strides, dtype=boxes.dtype, device=device)[level]
    heights = torch.tensor([s[0] for s in level_shapes], device=device)[level]
    widths = torch.tensor([s[1] for s in level_shapes], device=device)[level]
    centre = (boxes[gt, :2] + boxes[gt, 2:]) / 2
    gx = torch.minimum(torch.div(centre[:, 0], strides, rounding_mode="floor").long().clamp(min=0), widths - 1)
    gy = torch.minimum(torch.div(centre[:, 1], strides, rounding_mode="floor").long().clamp(min=0), heights - 1)
    anchor = k - group * anchors_per_level

    # one box per (image, level, anchor, cell): sort by area descending, keep the last (smallest)
    area = wh.prod(1)[gt]
    order = torch.argsort(area, descending=True, stable=True)
    gt, level, anchor, gx, gy = gt[order], level[order], anchor[order], gx[order], gy[order]
    max_w, max_h = int(max(s[1] for s in level_shapes)), int(max(s[0] for s in level_shapes))
    key = (((batch_index[gt] * num_levels + level) * anchors_per_level + anchor) * max_h + gy) * max_w + gx
    uniq, inverse = torch.unique(key, return_inverse=True)
    positions = torch.arange(len(key), device=device)
    last = torch.full((len(uniq),), -1, dtype=torch.long, device=device).scatter_reduce(0, inverse, positions, "amax")
    gt, level, anchor, gx, gy = gt[last], level[last], anchor[last], gx[last], gy[last]

    out = []
    for lvl in range(num_levels):
        m = level == lvl
        g = gt[m]
        out.append(Positives(batch_index[g], anchor[m], gy[m], gx[m], boxes[g], labels[g], weights[g]))
    return out
