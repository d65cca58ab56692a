"""ATSS assignment (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free
Detection"), anchor-free form.

Why ATSS rather than FCOS's fixed scale ranges + centre sampling: the per-level size ranges
(0-64-128-inf px) are tuned to COCO; on a small custom set whose objects cluster in one size
band, fixed ranges put nearly every object on one level and give few positives. ATSS picks,
per object, the ``topk`` cells nearest its centre on *every* level, then keeps those whose
IoU between the cell's square "anchor" (``anchor_scale`` x stride) and the object exceeds
mean + std of the candidates' IoUs. The threshold adapts to each object, so every object gets
positives on the level(s) that fit it, with no hyperparameter tied to the dataset's sizes:
the property that helps most when training from scratch on a few hundred images. It also
needs no predictions (unlike SimOTA), so targets are stable from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import box_iou


@dataclass
class Assignment:
    """Per point: index of the assigned object (valid where ``positive``)."""

    positive: torch.Tensor  # bool [P]
    gt_index: torch.Tensor  # int64 [P]


def atss_assign(
    points: torch.Tensor,
    level_sizes: list[int],
    strides: torch.Tensor,
    gt_boxes: torch.Tensor,
    topk: int = 9,
    anchor_scale: float = 8.0,
) -> Assignment:
    """``points`` [P, 2] cell centres of all levels concatenated; ``level_sizes`` points per level;
    ``strides`` [P] stride of each point; ``gt_boxes`` [G, 4] absolute xyxy."""
    num_points = points.shape[0]
    num_gt = gt_boxes.shape[0]
    device = points.device
    if num_gt == 0:
        return Assignment(torch.zeros(num_points, dtype=torch.bool, device=device),
                          torch.zeros(num_points, dtype=torch.long, device=device))

    half = strides[:, None] * (anchor_scale / 2)
    anchors = torch.cat([points - half, points + half], dim=1)
    ious = box_iou(anchors, gt_boxes)  # [P, G]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dists = torch.cdist(points, gt_centres)  # [P, G]

    candidates = []
    start = 0
    for size in level_sizes:
        k = min(topk, size)
        _, idx = dists[start:start + size].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start += size
    candidates = torch.cat(candidates, dim=0)  # [K, G], distinct points per object
    cand_ious = ious.gather(0, candidates)
    threshold = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= threshold

    # a candidate's centre must lie inside the object, else its ltrb targets would be negative
    cand_points = points[candidates]  # [K, G, 2]
    inside = ((cand_points - gt_boxes[None, :, :2]).amin(-1) > 0.01) & ((gt_boxes[None, :, 2:] - cand_points).amin(-1) > 0.01)
    # mean + std can exceed every candidate's IoU (e.g. one low outlier): keep the best inside one
    best = torch.where(inside, cand_ious, torch.full_like(cand_ious, -1.0)).argmax(0)
    is_pos[best, torch.arange(num_gt, device=device)] = True
    is_pos &= inside

    pos_matrix = torch.zeros(num_points, num_gt, dtype=torch.bool, device=device)
    pos_matrix.scatter_(0, candidates, is_pos)
    # a point claimed by several objects goes to the one its anchor overlaps most
    masked = torch.where(pos_matrix, ious, torch.full_like(ious, -1.0))
    best_iou, gt_index = masked.max(dim=1)
    return Assignment(best_iou > -1.0, gt_index)
