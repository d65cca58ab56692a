"""Instance masks predicted per region of interest (a two-stage model's mask head: an M x M
probability map inside each detected box) -> binary masks over the whole input image.

Models keep masks at RoI resolution as long as they can: K full-image masks at 640 px are
K x 0.4 MB as uint8 and four times that as float, while K x 28 x 28 probabilities are 3 KB
each. An exported graph therefore outputs the RoI masks beside the boxes, and whoever reads
them (the model's ``postprocess``, a Predictor over ONNX / OpenVINO outputs) pastes them here.

``paste_masks`` is torchvision's ``paste_masks_in_image`` (one pixel of zero padding around
the RoI map, the box widened by the same ratio and rounded down to integers, bilinear resize
to the box, pasted at the box) followed by the usual ``> 0.5``, written straight into uint8
so no [K, H, W] float tensor is ever made.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.5  # torchvision / Detectron2 binarise mask probabilities at 0.5


def paste_masks(
    roi_masks: torch.Tensor | np.ndarray,
    boxes: torch.Tensor | np.ndarray,
    image_hw: tuple[int, int],
    threshold: float = MASK_THRESHOLD,
) -> torch.Tensor:
    """RoI mask probabilities [K, M, M] inside ``boxes`` [K, 4] (xyxy, image px) -> uint8 [K, H, W]
    (1 inside the object). Equal to ``paste_masks_in_image(...) > threshold`` in torchvision."""
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    masks = torch.as_tensor(roi_masks).float()
    boxes = torch.as_tensor(boxes).float().reshape(-1, 4)
    height, width = int(image_hw[0]), int(image_hw[1])
    if masks.ndim == 4:  # [K, 1, M, M] as torchvision's roi_heads return them
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"roi_masks must be [K, M, M] with one map per box, got {tuple(masks.shape)} for {boxes.shape[0]} boxes")
    out = torch.zeros((boxes.shape[0], height, width), dtype=torch.uint8, device=masks.device)
    if boxes.shape[0] == 0:
        return out
    padded, scale = expand_masks(masks[:, None], padding=1)
    corners = expand_boxes(boxes.to(masks.device), scale).to(torch.int64).tolist()
    for i, (x0, y0, x1, y1) in enumerate(corners):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        if xb <= xa or yb <= ya:
            continue  # the box lies outside the image
        resized = F.interpolate(padded[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = resized[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
    return out
