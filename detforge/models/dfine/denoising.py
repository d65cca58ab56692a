"""Contrastive denoising queries (DN-DETR / DINO style), training only.

Each ground-truth box is repeated in ``groups`` groups, each holding a positive copy (box jittered
by less than half its size, to be reconstructed) and a negative copy (jittered by one to two
half-sizes, to be classified as background). Some labels are flipped at random; optionally some
are dropped (the padding index), so those queries carry a box and no class. An attention mask
keeps the groups from seeing each other and the matching queries from seeing any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with numerator and denominator each kept above ``eps``."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@dataclass
class DenoisingQueries:
    content: Tensor  # [B, D, C] query content (class embeddings)
    boxes_unact: Tensor  # [B, D, 4] noised boxes, inverse-sigmoid cxcywh
    attn_mask: Tensor  # [D + Q, D + Q] bool, True = may not attend
    meta: dict  # dn_positive_idx, dn_num_group, dn_num_split (the loss reads it)


def build_denoising_queries(
    targets: list[dict[str, Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    label_drop_ratio: float = 0.0,
) -> DenoisingQueries | dict | None:
    """Denoising queries for a batch of targets (``labels`` [N], ``boxes`` [N, 4] normalised cxcywh).

    Returns None when denoising is off, only the meta dict (``dn_num_split`` = [0, Q]) when no
    image has a box, else a :class:`DenoisingQueries`.
    """
    if num_denoising <= 0:
        return None
    counts = [len(t["labels"]) for t in targets]
    device = class_embed.weight.device
    max_boxes = max(counts) if counts else 0
    if max_boxes == 0:
        return {"dn_positive_idx": None, "dn_num_group": 0, "dn_num_split": [0, num_queries]}

    groups = max(num_denoising // max_boxes, 1)
    batch = len(targets)
    labels = torch.full((batch, max_boxes), num_classes, dtype=torch.long, device=device)
    boxes = torch.zeros((batch, max_boxes, 4), device=device)
    real = torch.zeros((batch, max_boxes), dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if n:
            labels[i, :n] = t["labels"].to(device)
            boxes[i, :n] = t["boxes"].to(device=device, dtype=boxes.dtype)
            real[i, :n] = True

    # layout per image: [group 0: positives (max_boxes), negatives (max_boxes)], [group 1: ...] ...
    labels = labels.repeat(1, 2 * groups)
    boxes = boxes.repeat(1, 2 * groups, 1)
    real = real.repeat(1, 2 * groups)
    slot = torch.arange(2 * groups * max_boxes, device=device)
    negative = ((slot // max_boxes) % 2 == 1)[None, :, None].to(boxes.dtype).expand(batch, -1, 1)
    positive = (negative[..., 0] == 0) & real
    positive_slots = torch.nonzero(positive)[:, 1]
    dn_positive_idx = torch.split(positive_slots, [n * groups for n in counts])
    total = 2 * groups * max_boxes

    if label_noise_ratio > 0:
        flip = torch.rand(labels.shape, device=device) < label_noise_ratio * 0.5
        random_labels = torch.randint_like(labels, 0, num_classes)
        labels = torch.where(flip & real, random_labels, labels)
    if label_drop_ratio > 0:
        # no label at all (the padding embedding): the class loss on these queries can only be
        # met from the image, where a kept or flipped label hands the class head a shortcut
        drop = torch.rand(labels.shape, device=device) < label_drop_ratio
        labels = torch.where(drop & real, torch.full_like(labels, num_classes), labels)

    if box_noise_scale > 0:
        corners = box_convert(boxes, "cxcywh", "xyxy")
        half_size = boxes[..., 2:].repeat(1, 1, 2) * 0.5 * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes)
        # positives move each edge by < 1 half-size, negatives by 1..2 half-sizes
        magnitude = magnitude + negative
        corners = (corners + sign * magnitude * half_size).clamp(0.0, 1.0)
        boxes = box_convert(corners, "xyxy", "cxcywh").abs()
    boxes_unact = inverse_sigmoid(boxes)

    size = total + num_queries
    attn_mask = torch.zeros((size, size), dtype=torch.bool, device=device)
    attn_mask[total:, :total] = True  # matching queries never see the denoising ones
    group_of = torch.arange(total, device=device) // (2 * max_boxes)
    attn_mask[:total, :total] = group_of[:, None] != group_of[None, :]

    meta = {"dn_positive_idx": dn_positive_idx, "dn_num_group": groups, "dn_num_split": [total, num_queries]}
    return DenoisingQueries(class_embed(labels), boxes_unact, attn_mask, meta)
