"""FCOS training losses on ATSS-assigned points: sigmoid focal loss for classes, GIoU for
boxes (weighted by the centerness target, as in FCOS/ATSS, so off-centre points, whose boxes
are harder, count less), and BCE for centerness. Per-object ``weights`` (from mixup) scale every
term of the points assigned to that object."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detforge.models.fcos.assigner import atss_assign


def ltrb_to_boxes(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def centerness_target(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) of each point inside its box; 1 at the centre."""
    l = points[:, 0] - boxes[:, 0]
    t = points[:, 1] - boxes[:, 1]
    r = boxes[:, 2] - points[:, 0]
    b = boxes[:, 3] - points[:, 1]
    lr = torch.minimum(l, r) / torch.maximum(l, r).clamp(min=1e-6)
    tb = torch.minimum(t, b) / torch.maximum(t, b).clamp(min=1e-6)
    return (lr * tb).clamp(min=0).sqrt()


class FCOSLoss:
    def __init__(
        self,
        num_classes: int,
        strides: tuple[int, ...],
        weight_cls: float = 1.0,
        weight_box: float = 2.0,
        weight_ctr: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        atss_topk: int = 9,
    ) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.strides = strides
        self.weights = {"loss_cls": weight_cls, "loss_box": weight_box, "loss_ctr": weight_ctr}
        self.alpha = focal_alpha
        self.gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.atss_topk = atss_topk

    def __call__(self, outputs: dict[str, list[torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        cls_logits = torch.cat(outputs["cls"], dim=1)  # [B, P, C]
        ltrb = torch.cat(outputs["ltrb"], dim=1)  # [B, P, 4]
        ctr_logits = torch.cat(outputs["ctr"], dim=1)  # [B, P]
        points = torch.cat(outputs["points"], dim=0)  # [P, 2]
        level_sizes = [p.shape[0] for p in outputs["points"]]
        strides = torch.cat([torch.full((n,), float(s), device=points.device) for n, s in zip(level_sizes, self.strides)])
        batch, num_points, num_classes = cls_logits.shape
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} images")

        cls_target = torch.zeros_like(cls_logits)
        point_weight = torch.ones(batch, num_points, device=cls_logits.device)
        pos_pred, pos_gt, pos_ctr_logit, pos_ctr_target, pos_weight = [], [], [], [], []
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(points).reshape(-1, 4)
            labels = t["labels"].to(points.device).long().reshape(-1)
            if len(boxes) != len(labels):
                raise ValueError(f"target {i}: {len(boxes)} boxes but {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"target {i}: labels must be in [0, {num_classes - 1}], got {labels.tolist()}")
            box_w = t.get("weights")
            box_w = torch.ones(len(labels), device=points.device) if box_w is None else box_w.to(points).reshape(-1)
            assign = atss_assign(points, level_sizes, strides, boxes, self.atss_topk)
            pos = assign.positive
            if not pos.any():
                continue
            gt_idx = assign.gt_index[pos]
            onehot = F.one_hot(labels[gt_idx], num_classes).to(cls_target.dtype)
            if self.label_smoothing:
                onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / num_classes
            cls_target[i, pos] = onehot
            point_weight[i, pos] = box_w[gt_idx]
            gt = boxes[gt_idx]
            pos_pred.append(ltrb_to_boxes(points[pos], ltrb[i, pos]))
            pos_gt.append(gt)
            pos_ctr_logit.append(ctr_logits[i, pos])
            pos_ctr_target.append(centerness_target(points[pos], gt))
            pos_weight.append(box_w[gt_idx])

        num_pos = sum(len(p) for p in pos_pred)
        cls_loss = sigmoid_focal_loss(cls_logits, cls_target, self.alpha, self.gamma, reduction="none")
        loss_cls = (cls_loss * point_weight[..., None]).sum() / max(num_pos, 1)
        if num_pos == 0:
            # background-only batch: keep every head output in the graph with a zero gradient
            zero = ltrb.sum() * 0 + ctr_logits.sum() * 0
            loss_box, loss_ctr = zero, zero
        else:
            pred = torch.cat(pos_pred)
            ctr_t = torch.cat(pos_ctr_target)
            w = torch.cat(pos_weight)
            giou = generalized_box_iou_loss(pred, torch.cat(pos_gt), reduction="none")
            box_w = ctr_t * w
            loss_box = (giou * box_w).sum() / box_w.sum().clamp(min=1e-6)
            bce = F.binary_cross_entropy_with_logits(torch.cat(pos_ctr_logit), ctr_t, reduction="none")
            loss_ctr = (bce * w).sum() / num_pos
        raw = {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr}
        return {k: v * self.weights[k] for k, v in raw.items()}
