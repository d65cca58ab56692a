"""The D-FINE loss terms, each a function of matched predictions and targets: VFL and DEIM's
MAL (classification), L1 + GIoU (boxes), FGL (edge distributions towards the true offsets) and
DDF (distillation of the last layer's edge distributions into the earlier layers). The
criterion (criterion.py) decides what is matched to what and calls these; their definitions
follow the D-FINE paper (arXiv 2410.13842) and DEIM (arXiv 2412.04234)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from detforge.models.dfine.box_ops import AREA_EPS, cxcywh_to_xyxy

# softmax temperature of the DDF distillation
DDF_TEMPERATURE = 5.0


def _sum_per_box(loss: Tensor, num_boxes: float) -> Tensor:
    """Sum of a [B, Q, K] loss over everything, divided by num_boxes. Averaging over queries
    first, then rescaling by Q, is the reference's order of float32 rounding (the sum itself
    is the same); an empty query set (no denoising group) gives 0, not the NaN of an empty mean."""
    queries = loss.shape[1]
    if queries == 0:
        return loss.sum() * 0
    return loss.mean(1).sum() * queries / num_boxes


def varifocal_loss(
    logits: Tensor, class_target: Tensor, positive: Tensor, quality: Tensor, positive_weight: Tensor,
    alpha: float, gamma: float, num_boxes: float, negative_scale: Tensor | None = None,
) -> Tensor:
    """VFL. ``logits`` [B, Q, K]; ``class_target`` [B, Q, K] one-hot (maybe smoothed) on matched
    queries, 0 elsewhere; ``positive`` [B, Q, K] bool, the hard one-hot; ``quality`` [B, Q] IoU
    of the match (0 if unmatched); ``positive_weight`` [B, Q] per-box weight (1 if none);
    ``negative_scale`` [B, Q, K] (optional) multiplies the negatives' weights.
    Positives: target q, weight q. Negatives: target 0, weight alpha * p**gamma."""
    target = quality.unsqueeze(-1) * class_target
    prob = logits.detach().sigmoid()
    negative = alpha * prob.pow(gamma) * (1 if negative_scale is None else negative_scale)
    weight = torch.where(positive, target * positive_weight.unsqueeze(-1), negative)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return _sum_per_box(loss, num_boxes)


def matchability_aware_loss(
    logits: Tensor, class_target: Tensor, positive: Tensor, quality: Tensor, positive_weight: Tensor,
    gamma: float, num_boxes: float, negative_scale: Tensor | None = None,
) -> Tensor:
    """MAL (DEIM). Arguments as in varifocal_loss. Positives: target q**gamma, weight 1.
    Negatives: target 0, weight p**gamma."""
    target = quality.pow(gamma).unsqueeze(-1) * class_target
    prob = logits.detach().sigmoid()
    negative = prob.pow(gamma) * (1 if negative_scale is None else negative_scale)
    weight = torch.where(positive, positive_weight.unsqueeze(-1).expand_as(logits), negative)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return _sum_per_box(loss, num_boxes)


def class_cross_entropy(matched_logits: Tensor, labels: Tensor, box_weight: Tensor, num_boxes: float) -> Tensor:
    """Softmax cross-entropy over the classes of matched queries: ``matched_logits`` [M, K],
    ``labels`` [M] int, ``box_weight`` [M]; summed and divided by num_boxes (0 when M is 0)."""
    if matched_logits.shape[0] == 0:
        return matched_logits.sum() * 0
    ce = F.cross_entropy(matched_logits, labels.long(), reduction="none")
    return (ce * box_weight).sum() / num_boxes


def box_regression_losses(
    pred_boxes: Tensor, target_boxes: Tensor, box_weight: Tensor, num_boxes: float
) -> tuple[Tensor, Tensor]:
    """(L1, GIoU) of matched pairs, both [M, 4] cxcywh, each box scaled by ``box_weight`` [M]."""
    l1 = F.l1_loss(pred_boxes, target_boxes, reduction="none").sum(-1)
    # a negligible eps (instead of torchvision's 1e-7) keeps tiny normalised boxes exact
    giou = generalized_box_iou_loss(cxcywh_to_xyxy(pred_boxes), cxcywh_to_xyxy(target_boxes), eps=AREA_EPS)
    return (l1 * box_weight).sum() / num_boxes, (giou * box_weight).sum() / num_boxes


def fine_grained_localization_loss(
    pred_corners: Tensor, target_index: Tensor, weight_right: Tensor, weight_left: Tensor,
    edge_weight: Tensor, num_boxes: float,
) -> Tensor:
    """FGL: cross-entropy of each edge distribution [E, reg_max + 1] towards the two bins around
    the true offset, interpolated by (weight_left, weight_right), scaled by ``edge_weight`` [E]."""
    left = target_index.long()
    loss = (
        F.cross_entropy(pred_corners, left, reduction="none") * weight_left
        + F.cross_entropy(pred_corners, left + 1, reduction="none") * weight_right
    )
    return (loss * edge_weight).sum() / num_boxes


def decoupled_distillation_loss(
    pred_corners: Tensor, teacher_corners: Tensor, edge_weight: Tensor, positive: Tensor,
    num_pos: float, num_neg: float, temperature: float = DDF_TEMPERATURE,
) -> Tensor:
    """DDF: temperature-scaled KL from the final layer's edge distributions (teacher) to this
    layer's, per edge [E, reg_max + 1], weighted by ``edge_weight`` [E]. Matched and unmatched
    edges are averaged separately and mixed by num_pos : num_neg so neither group dominates."""
    kl = F.kl_div(
        F.log_softmax(pred_corners / temperature, dim=-1),
        F.softmax(teacher_corners.detach() / temperature, dim=-1),
        reduction="none",
    ).sum(-1)
    loss = edge_weight * temperature**2 * kl
    zero = pred_corners.sum() * 0
    pos_term = loss[positive].mean() if positive.any() else zero
    neg_term = loss[~positive].mean() if (~positive).any() else zero
    total = num_pos + num_neg
    if total <= 0:
        return zero
    return (pos_term * num_pos + neg_term * num_neg) / total
