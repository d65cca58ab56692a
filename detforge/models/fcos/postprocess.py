"""From raw head outputs to detections: score = sqrt(sigmoid(class) * sigmoid(centerness)),
top-k candidates per level, class-aware NMS, ``max_det`` best per image.

``select_candidates`` is what the eager path and the export graph both start from
(models/dense.py), so both rank the same candidates. It pads each level with zero-score cells
before its top-k, so ``topk`` never asks for more elements than exist, whatever the input size,
and the graph needs no shape branches.
"""

from __future__ import annotations

import torch
from torchvision.ops import clip_boxes_to_image

from detforge.models.fcos.loss import ltrb_to_boxes
from detforge.models.nms import level_top_candidates


def select_candidates(outputs: dict[str, list[torch.Tensor]], input_hw, pre_nms_topk: int):
    """-> boxes [B, N, 4] (clipped to ``input_hw``), scores [B, N], labels [B, N] with
    N = levels x ``pre_nms_topk``."""
    all_boxes, all_scores, all_labels = [], [], []
    for cls, ltrb, ctr, points in zip(outputs["cls"], outputs["ltrb"], outputs["ctr"], outputs["points"]):
        scores = (cls.sigmoid() * ctr.sigmoid()[..., None]).sqrt()  # [B, HW, C]
        boxes = ltrb_to_boxes(points[None], ltrb)  # [B, HW, 4]
        for out, part in zip((all_boxes, all_scores, all_labels), level_top_candidates(boxes, scores, pre_nms_topk)):
            out.append(part)
    boxes = clip_boxes_to_image(torch.cat(all_boxes, dim=1), input_hw)
    return boxes, torch.cat(all_scores, dim=1), torch.cat(all_labels, dim=1)
