"""Darknet's ``[yolo]`` decoding of a raw output map, shared by the loss, post-processing and the
export graph: centre = (cell + sigmoid(tx, ty)) * stride, size = anchor * exp(tw, th) in input
pixels; objectness and classes are independent sigmoids (a box may carry several classes)."""

from __future__ import annotations

import torch

# exp() of larger values gives boxes thousands of anchors wide; the clamp keeps float32 finite
MAX_LOG_WH = 8.0


def split_level(raw: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """[B, A * (5 + C), H, W] -> [B, A, H, W, 5 + C] (float32)."""
    b, _, h, w = raw.shape
    return raw.float().view(b, num_anchors, -1, h, w).permute(0, 1, 3, 4, 2)


def cell_grid(h, w, device) -> torch.Tensor:
    """[H, W, 2] cell offsets (x, y); sizes may be traced tensors in an export graph."""
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def decode_boxes(p: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """``p`` [B, A, H, W, 5 + C], ``anchors`` [A, 2] px -> xyxy boxes [B, A, H, W, 4] in input px."""
    grid = cell_grid(p.shape[2], p.shape[3], p.device)
    centre = (p[..., :2].sigmoid() + grid) * stride
    size = p[..., 2:4].clamp(max=MAX_LOG_WH).exp() * anchors.view(1, -1, 1, 1, 2).to(p.dtype)
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)
