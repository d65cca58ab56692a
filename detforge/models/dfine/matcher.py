"""One-to-one assignment of D-FINE queries to ground-truth boxes (Hungarian matching).

The cost of giving query q the target t is
    cost_class * focal(q, label_t) + cost_bbox * L1(box_q, box_t) - cost_giou * GIoU(box_q, box_t)
where focal is the focal-loss difference between calling the query positive and negative for
the target's class (alpha/gamma as in the focal loss), so confident queries are cheap.
scipy's linear_sum_assignment solves each image's cost matrix.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou

from detforge.models.dfine.box_ops import cxcywh_to_xyxy

MatchIndices = list[tuple[Tensor, Tensor]]  # per image: (query indices, target indices), int64

# cost given to entries that are not finite (a diverged prediction): high enough that
# linear_sum_assignment never prefers them, finite so it never refuses the matrix
_BAD_COST = 1e4
# cost that removes a query from later rounds of top-k matching
_TAKEN_COST = 1e6


class HungarianMatcher:
    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0; at least one must be non-zero")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor) -> Tensor:
        """Cost [Q, N] of one image: ``logits`` [Q, K], ``boxes`` [Q, 4] and ``target_boxes``
        [N, 4] cxcywh 0..1, ``labels`` [N] int64."""
        prob = logits.float().sigmoid()[:, labels]
        boxes = boxes.float()
        target_boxes = target_boxes.float()
        # 1e-8 keeps log() finite when a probability saturates at 0 or 1
        cost_pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        cost_neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + 1e-8).log()
        cost_l1 = torch.cdist(boxes, target_boxes, p=1)
        giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes))
        cost = self.cost_bbox * cost_l1 + self.cost_class * (cost_pos - cost_neg) - self.cost_giou * giou
        # zero-area boxes give 0/0 in GIoU: treat them like any unattractive pair
        return torch.nan_to_num(cost, nan=1.0, posinf=_BAD_COST, neginf=-_BAD_COST)

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], return_topk: int | bool = False
    ) -> dict[str, MatchIndices]:
        """``outputs``: pred_logits [B, Q, K], pred_boxes [B, Q, 4] cxcywh 0..1; ``targets``: one
        dict per image with labels [N] and boxes [N, 4] cxcywh 0..1 (N may be 0).

        Returns {"indices": [(query_idx, target_idx) per image]}; with ``return_topk=k`` also
        "indices_o2m": each target matched to up to k distinct queries (k rounds of one-to-one
        matching, each excluding the queries already taken), for one-to-many training."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {len(targets)} target dicts for a batch of {logits.shape[0]} images")
        costs = self._batched_costs(logits, boxes, targets) if self._batched(logits) else self._per_image_costs(
            logits, boxes, targets)
        indices = [_assign(c) for c in costs]
        result = {"indices": [_as_tensors(rows, cols) for rows, cols in indices]}
        if return_topk:
            result["indices_o2m"] = [_top_k_assign(c, int(return_topk), first) for c, first in zip(costs, indices)]
        return result

    @staticmethod
    def _batched(logits: Tensor) -> bool:
        # On a GPU the per-image matrices cost a few hundred kernel launches per image and layer,
        # which bound the training step (D-FINE-S at batch 32 ran no faster than D-FINE-N); one
        # matrix over the whole batch's targets does more arithmetic in a handful of launches.
        # On a CPU the arithmetic is what costs, so each image gets its own matrix there.
        return logits.device.type != "cpu" and logits.shape[0] > 1

    def _per_image_costs(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[np.ndarray]:
        return _to_host([self.cost_matrix(logits[i], boxes[i], t["labels"], t["boxes"]) for i, t in enumerate(targets)])

    def _batched_costs(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> list[np.ndarray]:
        """Every query of the batch against every target of the batch; each image keeps the
        columns of its own targets (the same numbers as its own matrix)."""
        b, q = logits.shape[:2]
        labels = torch.cat([t["labels"] for t in targets])
        if len(labels) == 0:
            return [np.zeros((q, 0), dtype=np.float32) for _ in targets]
        target_boxes = torch.cat([t["boxes"] for t in targets])
        full = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), labels, target_boxes).reshape(b, q, -1)
        counts = [len(t["labels"]) for t in targets]
        starts = np.cumsum([0, *counts[:-1]])
        return _to_host([full[i, :, s : s + n] for i, (s, n) in enumerate(zip(starts, counts))])


def _to_host(blocks: list[Tensor]) -> list[np.ndarray]:
    """The per-image cost matrices as numpy arrays, in one device-to-host copy for the batch."""
    if not blocks:
        return []
    flat = torch.cat([c.reshape(-1) for c in blocks]).cpu().numpy()
    costs, offset = [], 0
    for c in blocks:
        costs.append(flat[offset : offset + c.numel()].reshape(c.shape))
        offset += c.numel()
    return costs


def _assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if cost.shape[0] == 0 or cost.shape[1] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return linear_sum_assignment(cost)


def _as_tensors(rows: np.ndarray, cols: np.ndarray) -> tuple[Tensor, Tensor]:
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def _top_k_assign(cost: np.ndarray, k: int, first: tuple[np.ndarray, np.ndarray]) -> tuple[Tensor, Tensor]:
    cost = cost.copy()
    rows_all, cols_all = [first[0]], [first[1]]
    cost[first[0], :] = _TAKEN_COST
    for _ in range(1, k):
        rows, cols = _assign(cost)
        rows_all.append(rows)
        cols_all.append(cols)
        cost[rows, :] = _TAKEN_COST
    rows, cols = np.concatenate(rows_all), np.concatenate(cols_all)
    # rounds after the queries ran out re-pick taken queries: keep each query once
    _, first_seen = np.unique(rows, return_index=True)
    keep = np.sort(first_seen)
    return _as_tensors(rows[keep], cols[keep])
