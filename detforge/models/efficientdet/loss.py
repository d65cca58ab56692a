"""EfficientDet training loss, as in the paper and the official implementation:

- assignment: an anchor is positive for the object it overlaps most when that IoU >= 0.5, and
  every object also takes its best-overlapping anchor whatever the IoU (so no object is left
  without a positive); all other anchors are background;
- classification: sigmoid focal loss (alpha 0.25, gamma 1.5) summed over every anchor and
  class, divided by (positives in the batch + 1);
- boxes: Huber loss (delta 0.1) on the (dy, dx, dh, dw) codes of positive anchors, divided by
  4 x (positives + 1), weighted by ``box_weight`` (50).
Per-object ``weights`` (mixup) scale both terms of the anchors assigned to that object.
Label smoothing, as in the official focal loss, moves the BCE targets towards 0.5 while the
focal modulation still uses the hard targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from detforge.models.efficientdet.anchors import encode

MATCH_IOU = 0.5


def match_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """Index of the matched object per anchor, -1 for background. [A] int64."""
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.numel() == 0:
        return matched
    iou = box_iou(gt_boxes, anchors)  # [G, A]
    best_iou, best_gt = iou.max(dim=0)
    matched = torch.where(best_iou >= MATCH_IOU, best_gt, matched)
    # every object keeps its best anchor; when two objects share one, the first object takes it
    # (as the reference matcher does), decided by a min-reduce so the result is deterministic
    num_gt = gt_boxes.shape[0]
    forced = torch.full_like(matched, num_gt)
    forced.scatter_reduce_(0, iou.argmax(dim=1), torch.arange(num_gt, device=anchors.device), reduce="amin")
    return torch.where(forced < num_gt, forced, matched)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Element-wise sigmoid focal loss (not reduced)."""
    prob = logits.sigmoid()
    p_t = targets * prob + (1 - targets) * (1 - prob)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    modulation = (1 - p_t) ** gamma
    if label_smoothing:
        targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    return alpha_t * modulation * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def huber(diff: torch.Tensor, delta: float) -> torch.Tensor:
    abs_diff = diff.abs()
    quadratic = abs_diff.clamp(max=delta)
    return 0.5 * quadratic ** 2 + delta * (abs_diff - quadratic)


class EfficientDetLoss:
    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 1.5, delta: float = 0.1,
                 box_weight: float = 50.0, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma
        self.delta = delta
        self.box_weight = box_weight
        self.label_smoothing = label_smoothing

    def __call__(self, outputs: dict[str, list[torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        cls_logits = torch.cat(outputs["cls"], dim=1).float()  # [B, N, C]
        box_codes = torch.cat(outputs["box"], dim=1).float()  # [B, N, 4]
        anchors = torch.cat(outputs["anchors"], dim=0)  # [N, 4]
        batch, _, num_classes = cls_logits.shape
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} images")

        cls_target = torch.zeros_like(cls_logits)
        anchor_weight = torch.ones(cls_logits.shape[:2], device=cls_logits.device)
        pos_pred, pos_target, pos_weight = [], [], []
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(anchors).reshape(-1, 4)
            labels = t["labels"].to(anchors.device).long().reshape(-1)
            if len(boxes) != len(labels):
                raise ValueError(f"target {i}: {len(boxes)} boxes but {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"target {i}: labels must be in [0, {num_classes - 1}], got {labels.tolist()}")
            box_w = t.get("weights")
            box_w = torch.ones(len(labels), device=anchors.device) if box_w is None else box_w.to(anchors).reshape(-1)
            matched = match_anchors(anchors, boxes)
            pos = matched >= 0
            if not pos.any():
                continue
            gt_idx = matched[pos]
            cls_target[i, pos] = F.one_hot(labels[gt_idx], num_classes).to(cls_target.dtype)
            anchor_weight[i, pos] = box_w[gt_idx]
            pos_pred.append(box_codes[i, pos])
            pos_target.append(encode(boxes[gt_idx], anchors[pos]))
            pos_weight.append(box_w[gt_idx])

        num_pos = sum(len(p) for p in pos_pred)
        normalizer = num_pos + 1.0
        cls_loss = focal_loss(cls_logits, cls_target, self.alpha, self.gamma, self.label_smoothing)
        loss_cls = (cls_loss * anchor_weight[..., None]).sum() / normalizer
        if num_pos == 0:
            loss_box = box_codes.sum() * 0  # background-only batch: box net in the graph, zero gradient
        else:
            diff = torch.cat(pos_pred) - torch.cat(pos_target)
            loss_box = (huber(diff, self.delta) * torch.cat(pos_weight)[:, None]).sum() / (4 * normalizer)
        return {"loss_cls": loss_cls, "loss_box": self.box_weight * loss_box}
