"""NMS-free D-FINE post-processing: sigmoid scores, top-k over (query, class) pairs, boxes to
input pixels. Pure tensor code, so the same function serves the Python API and exported graphs."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def topk_detections(logits: Tensor, boxes_cxcywh: Tensor, image_hw: tuple[int, int] | Tensor,
                    max_det: int = 300) -> tuple[Tensor, Tensor, Tensor]:
    """logits [B, Q, C], boxes [B, Q, 4] normalised cxcywh -> (boxes [B, K, 4] xyxy in input
    pixels clipped to the image, scores [B, K] descending, labels [B, K]) with K = ``max_det``.

    One query may yield several (class, score) pairs, as in the official focal-style selection.
    When Q * C < max_det the tail is padded with score 0, label -1 and an empty box, so K stays
    fixed for exported graphs.
    """
    if max_det < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det}")
    b, q, c = logits.shape
    if isinstance(image_hw, Tensor):
        h, w = image_hw[0].to(boxes_cxcywh.dtype), image_hw[1].to(boxes_cxcywh.dtype)
        scale = torch.stack([w, h, w, h])
    else:
        h, w = image_hw
        scale = torch.tensor([w, h, w, h], dtype=boxes_cxcywh.dtype, device=boxes_cxcywh.device)
    xyxy = box_convert(boxes_cxcywh, "cxcywh", "xyxy") * scale
    xyxy = torch.minimum(xyxy.clamp(min=0), scale)

    k = min(max_det, q * c)
    scores, flat = logits.sigmoid().flatten(1).topk(k, dim=1)
    labels = flat % c
    query = flat // c
    picked = xyxy.gather(1, query[..., None].expand(-1, -1, 4))
    if k < max_det:
        pad = max_det - k
        picked = torch.cat([picked, picked.new_zeros(b, pad, 4)], dim=1)
        scores = torch.cat([scores, scores.new_zeros(b, pad)], dim=1)
        labels = torch.cat([labels, labels.new_full((b, pad), -1)], dim=1)
    return picked, scores, labels


def to_detections(boxes: Tensor, scores: Tensor, labels: Tensor) -> list[dict[str, Tensor]]:
    """Batched tensors -> one dict per image, padding entries (label -1) removed."""
    results = []
    for bx, sc, lb in zip(boxes, scores, labels):
        keep = lb >= 0
        results.append({"boxes": bx[keep], "scores": sc[keep], "labels": lb[keep]})
    return results
