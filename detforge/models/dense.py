"""What the dense one-stage families (FCOS, YOLOv3, EfficientDet) share around their own parts:
training forward -> loss, and raw outputs -> per-image candidates -> class-aware NMS, eagerly
for ``postprocess`` and as one fixed-row graph op for ``export_forward``.

A family supplies ``raw_outputs(images)``, ``candidates(outputs, input_hw)`` (its decoding and
top-k per level, [B, N] boxes / scores / labels) and ``criterion``; the eager and graph paths
both start from ``candidates``, so an exported model ranks exactly as ``postprocess`` does."""

from __future__ import annotations

from typing import Any

import torch

from detforge.models.base import DetectionModel
from detforge.models.nms import nms_fixed_rows, nms_per_image


class DenseDetector(DetectionModel):
    # set by each family's constructor
    nms_iou: float
    score_thr: float

    def raw_outputs(self, images: torch.Tensor) -> Any:
        raise NotImplementedError

    def candidates(self, outputs: Any, input_hw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-NMS candidates: boxes [B, N, 4] xyxy input px, scores [B, N], labels [B, N]."""
        raise NotImplementedError

    def compute_loss(self, outputs: Any, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Weighted loss terms of raw outputs (the training forward; also the validation loss)."""
        return self.criterion(outputs, targets)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        outputs = self.raw_outputs(images)
        if self.training and targets is not None:
            return self.compute_loss(outputs, targets)
        return outputs

    def postprocess(self, outputs: Any, input_hw: tuple[int, int], max_det: int = 300) -> list[dict[str, torch.Tensor]]:
        boxes, scores, labels = self.candidates(outputs, tuple(int(v) for v in input_hw))
        return nms_per_image(boxes, scores, labels, max_det, self.nms_iou, self.score_thr)

    def export_forward(self, images: torch.Tensor, max_det: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # input_hw stays a traced shape here, so a dynamic-size export clips to the real input
        boxes, scores, labels = self.candidates(self.raw_outputs(images), images.shape[-2:])
        return nms_fixed_rows(boxes, scores, labels, self.num_classes, max_det, self.nms_iou, self.score_thr)
