"""Box helpers for the D-FINE matcher and loss that torchvision.ops does not provide.

Boxes here are normalised to 0..1 of the input image, as the D-FINE head predicts them.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Smallest denominator used in IoU-style ratios: far below any real normalised area
# (a 1-pixel box in a 640 image has area 2.4e-6), so it only matters for empty boxes.
AREA_EPS = 1e-12


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2) with negative widths/heights clamped to 0.

    D-FINE decodes boxes from edge distances that may be negative early in training, which
    gives w < 0; torchvision's box_convert would then return x2 < x1, an inverted box whose
    GIoU is meaningless. Clamping turns it into a zero-size box at the centre instead.
    """
    cx, cy, w, h = boxes.unbind(-1)
    half_w = 0.5 * w.clamp(min=0.0)
    half_h = 0.5 * h.clamp(min=0.0)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of boxes1[i] with boxes2[i] (both [N, 4] xyxy): [N]. Zero-area pairs give 0, not NaN."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter_wh = (bottom_right - top_left).clamp(min=0.0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area1 + area2 - inter
    return inter / (union + AREA_EPS)


def edge_distances(points: Tensor, boxes_xyxy: Tensor, reg_scale: float | Tensor) -> Tensor:
    """Inverse of D-FINE's distance2bbox: the (left, top, right, bottom) edge offsets of
    ``boxes_xyxy`` [N, 4] relative to the reference boxes ``points`` [N, 4] (cx, cy, w, h), in
    the units the decoder predicts: an offset of d moves an edge by (d + reg_scale/2) * w / reg_scale
    from the centre, so d = 0 reproduces the reference box."""
    reg_scale = abs(reg_scale)
    # a zero-size reference box would divide by zero; 1e-16 keeps the offset finite (and huge,
    # so it lands in the outermost bin) without moving any real value
    unit_w = points[..., 2] / reg_scale + 1e-16
    unit_h = points[..., 3] / reg_scale + 1e-16
    half = 0.5 * reg_scale
    left = (points[..., 0] - boxes_xyxy[..., 0]) / unit_w - half
    top = (points[..., 1] - boxes_xyxy[..., 1]) / unit_h - half
    right = (boxes_xyxy[..., 2] - points[..., 0]) / unit_w - half
    bottom = (boxes_xyxy[..., 3] - points[..., 1]) / unit_h - half
    return torch.stack([left, top, right, bottom], dim=-1)


def distances_to_bins(distances: Tensor, bins: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Spread each continuous offset over its two neighbouring bins of the weighting function.

    ``bins`` holds W(0..reg_max), strictly increasing. Returns, flattened: the left bin index as
    float, the weight of the right bin and the weight of the left bin (they sum to 1, linear
    interpolation). Offsets below W(0) go wholly to bin 0; offsets at or above W(reg_max) go
    wholly to bin reg_max (encoded as left index reg_max - 0.1, right weight 1).
    """
    reg_max = bins.numel() - 1
    values = distances.reshape(-1)
    # number of bins <= value, minus one: the bin at or left of the value
    left = torch.searchsorted(bins.contiguous(), values.contiguous(), right=True) - 1
    inside = (left >= 0) & (left < reg_max)
    safe_left = left.clamp(0, reg_max - 1)
    left_value = bins[safe_left]
    right_value = bins[safe_left + 1]
    to_left = (values - left_value).abs()
    to_right = (right_value - values).abs()
    interp_right = to_left / (to_left + to_right).clamp(min=AREA_EPS)

    below = left < 0
    weight_right = torch.where(inside, interp_right, (~below).to(values.dtype))
    weight_left = 1.0 - weight_right
    index = torch.where(inside, left.to(values.dtype), torch.zeros_like(values))
    index = torch.where(left >= reg_max, torch.full_like(values, reg_max - 0.1), index)
    return index, weight_right, weight_left


def bbox2distance(
    points: Tensor, boxes_xyxy: Tensor, bins: Tensor, reg_scale: float | Tensor, eps: float = 0.1
) -> tuple[Tensor, Tensor, Tensor]:
    """FGL targets: ground-truth boxes (xyxy) as bin positions of the edge distributions
    predicted around the reference boxes ``points`` (cx, cy, w, h). ``bins`` = W(n) from
    fdr.weighting_function. Returns (left bin index as float in [0, reg_max - eps],
    right-bin weight, left-bin weight), each flattened to [N * 4] and detached."""
    reg_max = bins.numel() - 1
    with torch.no_grad():
        distances = edge_distances(points, boxes_xyxy, reg_scale)
        index, weight_right, weight_left = distances_to_bins(distances, bins)
        index = index.clamp(min=0.0, max=reg_max - eps)
    return index, weight_right, weight_left
