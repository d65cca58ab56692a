"""Dense detectors' last step, shared by the one-stage families (FCOS, YOLOv3, EfficientDet):
the best candidates of a level, then class-aware NMS, eagerly per image or as one graph op for
the whole batch with a fixed number of rows (what ONNX / OpenVINO / TensorRT exports hold).

Both paths keep the same detections: the graph path shifts the boxes of each (image, class)
into their own coordinate range, the trick torchvision's ``batched_nms`` uses, so a single
``nms`` call serves any batch size without shape branches."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, nms


def level_top_candidates(boxes: torch.Tensor, scores: torch.Tensor, k: int):
    """One level's ``k`` best (cell, class) pairs: boxes [B, HW, 4], scores [B, HW, C] ->
    boxes [B, k, 4], scores [B, k], labels [B, k]. The level is padded with ``k`` zero-score
    rows first, so ``topk`` never asks for more elements than exist, whatever the input size."""
    batch, _, num_classes = scores.shape
    scores = torch.cat([scores, scores.new_zeros(batch, k, num_classes)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros(batch, k, 4)], dim=1)
    top_scores, flat_idx = scores.flatten(1).topk(k, dim=1)
    cell = torch.div(flat_idx, num_classes, rounding_mode="floor")
    return boxes.gather(1, cell[..., None].expand(-1, -1, 4)), top_scores, flat_idx % num_classes


def nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, max_det: int,
                  nms_iou: float, score_thr: float) -> list[dict[str, torch.Tensor]]:
    """Eager path over [B, N] candidates: one dict per image, ``boxes`` xyxy input px,
    ``scores`` descending, ``labels``."""
    results = []
    for b, s, lab in zip(boxes, scores, labels):
        keep = s > score_thr
        b, s, lab = b[keep], s[keep], lab[keep]
        keep = batched_nms(b, s, lab, nms_iou)[:max_det]  # indices sorted by score, descending
        results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep]})
    return results


def nms_fixed_rows(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   max_det: int, nms_iou: float, score_thr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Graph path over [B, N] candidates: (boxes [B, K, 4], scores [B, K], labels [B, K]) with
    K = ``max_det``; rows past the detections are zero."""
    batch, num, _ = boxes.shape
    image_idx = torch.arange(batch, device=boxes.device)[:, None].expand(batch, num)
    group = (image_idx * num_classes + labels).reshape(-1)
    flat_boxes = boxes.reshape(-1, 4)
    offsets = group.to(flat_boxes.dtype)[:, None] * (flat_boxes.max() + 1)
    keep = nms(flat_boxes + offsets, scores.reshape(-1), nms_iou)
    kept = torch.zeros_like(scores.reshape(-1)).scatter(0, keep, 1.0).reshape(batch, num)
    scores = scores * kept * (scores > score_thr).to(scores.dtype)
    # zero padding guarantees K columns even when fewer candidates exist
    scores = torch.cat([scores, scores.new_zeros(batch, max_det)], dim=1)
    boxes = torch.cat([boxes, boxes.new_zeros(batch, max_det, 4)], dim=1)
    labels = torch.cat([labels, labels.new_zeros(batch, max_det)], dim=1)
    top_scores, idx = scores.topk(max_det, dim=1)
    valid = (top_scores > 0).to(boxes.dtype)
    top_boxes = boxes.gather(1, idx[..., None].expand(-1, -1, 4)) * valid[..., None]
    top_labels = labels.gather(1, idx) * valid.to(labels.dtype)
    return top_boxes, top_scores, top_labels
