"""From raw YOLOv3 maps to detections: score = sigmoid(objectness) * sigmoid(class) per class
(Darknet's), the ``pre_nms_topk`` best (anchor, cell, class) candidates per level, class-aware
NMS (torchvision's ``batched_nms``), the ``max_det`` best per image.

``select_candidates`` serves the eager path and the export graph alike (models/dense.py), so
both rank the same candidates. Each level is padded with zero-score rows before its top-k, so
``topk`` never asks for more elements than exist, whatever the input size, and the graph needs
no shape branches.
"""

from __future__ import annotations

import torch
from torchvision.ops import clip_boxes_to_image

from detforge.models.nms import level_top_candidates
from detforge.models.yolov3.decode import decode_boxes, split_level


def select_candidates(outputs: list[torch.Tensor], anchors: torch.Tensor, strides: tuple[int, ...],
                      anchors_per_level: int, input_hw, pre_nms_topk: int):
    """-> boxes [B, N, 4] (clipped to ``input_hw``), scores [B, N], labels [B, N]; N = levels x k."""
    all_boxes, all_scores, all_labels = [], [], []
    num_levels = len(outputs)
    for lvl, (raw, stride) in enumerate(zip(outputs, strides)):
        group = num_levels - 1 - lvl
        p = split_level(raw, anchors_per_level)
        boxes = decode_boxes(p, anchors[group * anchors_per_level : (group + 1) * anchors_per_level], stride)
        batch, num_classes = p.shape[0], p.shape[-1] - 5
        scores = (p[..., 4:5].sigmoid() * p[..., 5:].sigmoid()).reshape(batch, -1, num_classes)
        top = level_top_candidates(boxes.reshape(batch, -1, 4), scores, pre_nms_topk)
        for out, part in zip((all_boxes, all_scores, all_labels), top):
            out.append(part)
    boxes = clip_boxes_to_image(torch.cat(all_boxes, dim=1), input_hw)
    return boxes, torch.cat(all_scores, dim=1), torch.cat(all_labels, dim=1)
