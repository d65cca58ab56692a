"""From raw YOLOv3 maps to detections: score = sigmoid(objectness) * sigmoid(class) per class
(Darknet's), the ``pre_nms_topk`` best (anchor, cell, class) candidates per level, class-aware
NMS (torchvision's ``batched_nms``), the ``max_det`` best per image.

``select_candidates`` serves the eager path and the export graph alike, so both rank the same
candidates. Each level is padded with zero-score rows before its top-k, so ``topk`` never asks
for more elements than exist, whatever the input size, and the graph needs no shape branches.
The export path runs one NMS for the whole batch, with boxes of each (image, class) shifted into
their own coordinate range, and returns a fixed K = ``max_det`` rows per image (zeros past the
detections), as the other families' graphs do.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, clip_boxes_to_image, nms

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
        boxes = boxes.reshape(batch, -1, 4)
        scores = torch.cat([scores, scores.new_zeros(batch, pre_nms_topk, num_classes)], dim=1)
        boxes = torch.cat([boxes, boxes.new_zeros(batch, pre_nms_topk, 4)], dim=1)
        top_scores, flat_idx = scores.flatten(1).topk(pre_nms_topk, dim=1)
        cell = torch.div(flat_idx, num_classes, rounding_mode="floor")
        all_boxes.append(boxes.gather(1, cell[..., None].expand(-1, -1, 4)))
        all_scores.append(top_scores)
        all_labels.append(flat_idx % num_classes)
    boxes = clip_boxes_to_image(torch.cat(all_boxes, dim=1), input_hw)
    return boxes, torch.cat(all_scores, dim=1), torch.cat(all_labels, dim=1)


def postprocess_detections(candidates, max_det: int, nms_iou: float, score_thr: float) -> list[dict[str, torch.Tensor]]:
    """Eager path: one dict per image, ``boxes`` xyxy input px, ``scores`` descending, ``labels``."""
    boxes, scores, labels = candidates
    results = []
    for b, s, lab in zip(boxes, scores, labels):
        keep = s > score_thr
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = batched_nms(b, s, lab, nms_iou)[:max_det]  # sorted by score, descending
        results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return results


def export_detections(candidates, num_classes: int, max_det: int, nms_iou: float,
                      score_thr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Graph path: (boxes [B, K, 4], scores [B, K], labels [B, K]), K = ``max_det``."""
    boxes, scores, labels = candidates
    batch, num, _ = boxes.shape
    image_idx = torch.arange(batch, device=boxes.device)[:, None].expand(batch, num)
    group = (image_idx * num_classes + labels).reshape(-1)
    flat_boxes = boxes.reshape(-1, 4)
    offsets = group.to(flat_boxes.dtype)[:, None] * (flat_boxes.max() + 1)
    keep = nms(flat_boxes + offsets, scores.reshape(-1), nms_iou)
    kept = torch.zeros_like(scores.reshape(-1)).scatter(0, keep, 1.0).reshape(batch, num)
    scores = scores * kept * (scores > score_thr).to(scores.dtype)
    scores = torch.cat([scores, scores.new_zeros(batch, max_det)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros(batch, max_det, 4)], dim=1)
    labels = torch.cat([labels, labels.new_zeros(batch, max_det)], dim=1)
    top_scores, idx = scores.topk(max_det, dim=1)
    valid = (top_scores > 0).to(boxes.dtype)
    top_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4)) * valid[..., None]
    top_labels = labels.gather(1, idx) * valid.to(labels.dtype)
    return top_boxes, top_scores, top_labels
