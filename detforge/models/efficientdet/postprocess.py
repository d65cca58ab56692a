"""From raw head outputs to detections: sigmoid class scores, the ``pre_nms_topk`` best
(anchor, class) pairs per level, boxes decoded from their anchors, class-aware NMS (torchvision's
batched_nms), ``max_det`` best per image. The official defaults: NMS IoU 0.5, 5000 candidates
over all levels (here 1000 per level).

``select_candidates`` serves the eager path and the export graph alike (models/dense.py). It
pads each level with zero-score rows before its top-k, so ``topk`` never asks for more elements
than exist at any input size and the graph needs no shape branches.
"""

from __future__ import annotations

import torch
from torchvision.ops import clip_boxes_to_image

from detforge.models.efficientdet.anchors import decode


def select_candidates(outputs: dict[str, list[torch.Tensor]], input_hw, pre_nms_topk: int):
    """-> boxes [B, N, 4] (xyxy, clipped to ``input_hw``), scores [B, N], labels [B, N], with
    N = levels x ``pre_nms_topk``."""
    all_boxes, all_scores, all_labels = [], [], []
    for cls, codes, anchors in zip(outputs["cls"], outputs["box"], outputs["anchors"]):
        batch, _, num_classes = cls.shape
        scores = cls.float().sigmoid()
        scores = torch.cat([scores, scores.new_zeros(batch, pre_nms_topk, num_classes)], dim=1)
        codes = torch.cat([codes.float(), codes.new_zeros(batch, pre_nms_topk, 4, dtype=torch.float32)], dim=1)
        # padding rows get a unit anchor: their boxes are finite and their scores zero
        anchors = torch.cat([anchors, anchors.new_tensor([0.0, 0.0, 1.0, 1.0]).expand(pre_nms_topk, 4)], dim=0)
        top_scores, flat_idx = scores.flatten(1).topk(pre_nms_topk, dim=1)
        row = torch.div(flat_idx, num_classes, rounding_mode="floor")
        picked = codes.gather(1, row[..., None].expand(-1, -1, 4))
        all_boxes.append(decode(picked, anchors[row]))
        all_scores.append(top_scores)
        all_labels.append(flat_idx % num_classes)
    boxes = clip_boxes_to_image(torch.cat(all_boxes, dim=1), input_hw)
    return boxes, torch.cat(all_scores, dim=1), torch.cat(all_labels, dim=1)
