"""YOLOv3 training loss (Redmon & Farhadi 2018, with the refinements of the YOLO PyTorch ports).

- objectness: BCE on every cell and anchor; target 1 at assigned anchors (see assigner.py),
  0 elsewhere, except that an unassigned prediction whose decoded box already overlaps a
  ground truth by more than ``ignore_thr`` = 0.7 (Darknet's ``ignore_thresh``) is left out:
  it found an object and should not be pushed to background. Each level's mean is weighted by
  ``LEVEL_BALANCE`` (finer levels have 4x the cells per level step and so a smaller mean per
  object; the weights are the YOLO ports').
- classes: BCE per class at assigned anchors (independent sigmoids as in YOLOv3, so
  overlapping labels are possible), target 1 - eps for the box's class and eps / (C - 1) for
  the others, the label smoothing of Zhang et al. 2019 (``label_smoothing`` = eps).
- box: 1 - CIoU (Zheng et al. 2020) between the decoded box and its ground truth. CIoU rather
  than GIoU: GIoU's extra term only acts while boxes do not overlap and, once one box holds the
  other, GIoU falls back to IoU and converges slowly; CIoU also pulls the centres together and
  matches the aspect ratio, which is what an anchor's exp(t) scaling needs. Zheng et al. report
  it converging faster and ending higher than GIoU on YOLOv3. torchvision computes it.
- mixup: each object's ``weights`` (the blend ratio, Zhang et al. 2019) scale its box, class and
  positive objectness terms.

Relative gains box 0.05, objectness 1.0, classes 0.5 are the YOLO ports' defaults; each term
is a mean (over positives, or cells), so none grows with batch size or input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, complete_box_iou_loss

from detforge.models.yolov3.assigner import ANCHOR_IOU_THR, assign_anchors
from detforge.models.yolov3.decode import decode_boxes, split_level

LEVEL_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}
IGNORE_THR = 0.7


def smoothed_class_targets(labels: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """One-hot rows with the true class at 1 - eps and the others at eps / (C - 1)."""
    onehot = F.one_hot(labels, num_classes).float()
    if not eps:
        return onehot
    off = eps / (num_classes - 1) if num_classes > 1 else 0.0
    return onehot * (1.0 - eps) + (1 - onehot) * off


class YOLOv3Loss:
    def __init__(
        self,
        num_classes: int,
        strides: tuple[int, ...],
        anchors_per_level: int,
        label_smoothing: float = 0.0,
        gains: tuple[float, float, float] = (0.05, 1.0, 0.5),
        ignore_thr: float = IGNORE_THR,
        anchor_iou_thr: float = ANCHOR_IOU_THR,
    ) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.anchors_per_level = anchors_per_level
        self.label_smoothing = label_smoothing
        self.gains = dict(zip(("loss_box", "loss_obj", "loss_cls"), gains))
        self.ignore_thr = ignore_thr
        self.anchor_iou_thr = anchor_iou_thr

    def _gather_targets(self, targets, device):
        boxes, labels, weights, index = [], [], [], []
        for i, t in enumerate(targets):
            b = t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
            lab = t["labels"].to(device).long().reshape(-1)
            if len(b) != len(lab):
                raise ValueError(f"target {i}: {len(b)} boxes but {len(lab)} labels")
            if len(lab) and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f"target {i}: labels must be in [0, {self.num_classes - 1}], got {lab.tolist()}")
            w = t.get("weights")
            w = torch.ones(len(lab), device=device) if w is None else w.to(device=device, dtype=torch.float32).reshape(-1)
            boxes.append(b)
            labels.append(lab)
            weights.append(w)
            index.append(torch.full((len(lab),), i, dtype=torch.long, device=device))
        return torch.cat(boxes), torch.cat(labels), torch.cat(weights), torch.cat(index)

    def __call__(self, outputs: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                 anchors: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = outputs[0].shape[0]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} target dicts for a batch of {batch} images")
        device = outputs[0].device
        a = self.anchors_per_level
        levels = [split_level(o, a) for o in outputs]
        shapes = [(p.shape[2], p.shape[3]) for p in levels]
        boxes, labels, weights, index = self._gather_targets(targets, device)
        positives = assign_anchors(boxes, labels, weights, index, anchors.float(), a, list(self.strides), shapes,
                                   self.anchor_iou_thr)

        num_pos = sum(len(p.batch) for p in positives)
        loss_obj = outputs[0].new_zeros((), dtype=torch.float32)
        box_terms, cls_terms = [], []
        num_levels = len(levels)
        for lvl, (p, pos, stride) in enumerate(zip(levels, positives, self.strides)):
            group = num_levels - 1 - lvl
            level_anchors = anchors[group * a : (group + 1) * a].float()
            pred_boxes = decode_boxes(p, level_anchors, stride)  # [B, A, H, W, 4]
            obj_target = torch.zeros(p.shape[:4], device=device)
            obj_weight = torch.ones(p.shape[:4], device=device)
            with torch.no_grad():  # Darknet's ignore rule on the current predictions
                for i in range(batch):
                    gts = boxes[index == i]
                    if len(gts):
                        best = box_iou(pred_boxes[i].reshape(-1, 4), gts).max(1).values
                        obj_weight[i].view(-1)[best > self.ignore_thr] = 0.0
            if len(pos.batch):
                cell = (pos.batch, pos.anchor, pos.gy, pos.gx)
                obj_target[cell] = 1.0
                obj_weight[cell] = pos.weights
                box_loss = complete_box_iou_loss(pred_boxes[cell], pos.boxes, reduction="none")
                box_terms.append(box_loss * pos.weights)
                cls_target = smoothed_class_targets(pos.labels, self.num_classes, self.label_smoothing)
                bce = F.binary_cross_entropy_with_logits(p[cell][:, 5:], cls_target, reduction="none").mean(1)
                cls_terms.append(bce * pos.weights)
            obj_bce = F.binary_cross_entropy_with_logits(p[..., 4], obj_target, reduction="none")
            loss_obj = loss_obj + LEVEL_BALANCE.get(stride, 1.0) * (obj_bce * obj_weight).mean()
        if num_pos:
            loss_box = torch.cat(box_terms).sum() / num_pos
            loss_cls = torch.cat(cls_terms).sum() / num_pos
        else:  # background-only batch: every output stays in the graph with a zero gradient
            zero = sum(p[..., :4].sum() * 0 + p[..., 5:].sum() * 0 for p in levels)
            loss_box, loss_cls = zero, zero
        raw = {"loss_box": loss_box, "loss_obj": loss_obj, "loss_cls": loss_cls}
        return {k: v * self.gains[k] for k, v in raw.items()}
