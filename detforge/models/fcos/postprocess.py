"""From raw head outputs to detections: score = sqrt(sigmoid(class) * sigmoid(centerness)),
top-k candidates per level, class-aware NMS, ``max_det`` best per image.

``select_candidates`` is shared by the eager path and the export graph, so both rank the same
candidates. It pads each level with zero-score cells before its top-k, so ``topk`` never asks
for more elements than exist, whatever the input size, and the graph needs no shape branches.
"""

from __future__ import annotations

import torch
from torchvision.ops import clip_boxes_to_image

from detforge.models.fcos.loss import ltrb_to_boxes
from detforge.models.nms import level_top_candidates, nms_fixed_rows, nms_per_image


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


def postprocess_detections(outputs, input_hw: tuple[int, int], max_det: int, pre_nms_topk: int,
                           nms_iou: float, score_thr: float) -> list[dict[str, torch.Tensor]]:
    """Eager path: one dict per image, ``boxes`` xyxy input px, ``scores`` descending, ``labels``."""
    boxes, scores, labels = select_candidates(outputs, tuple(int(v) for v in input_hw), pre_nms_topk)
    return nms_per_image(boxes, scores, labels, max_det, nms_iou, score_thr)


def export_detections(outputs, input_hw, max_det: int, pre_nms_topk: int, nms_iou: float,
                      score_thr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Graph path: fixed-size (boxes [B, K, 4], scores [B, K], labels [B, K]), K = ``max_det``,
    rows past the detections are zero. One NMS call for the whole batch: boxes of different
    images and classes are shifted apart (each class of each image gets its own coordinate
    range), so one graph op serves any batch size."""
    boxes, scores, labels = select_candidates(outputs, input_hw, pre_nms_topk)
    return nms_fixed_rows(boxes, scores, labels, outputs["cls"][0].shape[-1], max_det, nms_iou, score_thr)
