"""EfficientDet / RetinaNet anchors and box coding, laid out as the published weights expect.

Per cell of level l: 3 scales (2^0, 2^(1/3), 2^(2/3)) x 3 aspect pairs (1, 1), (1.4, 0.7), (0.7, 1.4),
scales outer; base size ``anchor_scale`` (4) x the level's stride; rows ordered (y, x, anchor).
The stride of a level is input size / map size, so an input that is not a multiple of 128 still
gets anchors spread over the whole image (as the reference port computes them).
Box codes are (dy, dx, dh, dw), the Faster R-CNN coder without scale factors that the official
implementation uses: dy = (cy - cy_a) / h_a, dh = log(h / h_a).
"""

from __future__ import annotations

import math

import torch

ASPECTS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
NUM_SCALES = 3
ANCHOR_SCALE = 4.0
NUM_ANCHORS = NUM_SCALES * len(ASPECTS)
# exp() of larger log-size codes gives boxes far beyond any input (torchvision's clip, log(1000/16))
MAX_LOG_SIZE = math.log(1000.0 / 16)
CODER_EPS = 1e-8


def anchor_half_sizes(device=None) -> torch.Tensor:
    """[A, 2] (half width, half height) of each anchor in units of the level stride."""
    rows = []
    for octave in range(NUM_SCALES):
        for ax, ay in ASPECTS:
            size = ANCHOR_SCALE * 2 ** (octave / NUM_SCALES)
            rows.append((size * ax / 2, size * ay / 2))
    return torch.tensor(rows, dtype=torch.float32, device=device)


def level_anchors(feat_hw, input_hw, device=None) -> torch.Tensor:
    """Anchors xyxy (input pixels) of one level, [H*W*A, 4]. Sizes may be traced tensors."""
    h, w = feat_hw
    stride_y = input_hw[0] / h
    stride_x = input_hw[1] / w
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride_y
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride_x
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)[:, None, :]  # [HW, 1, 2]
    stride = torch.stack([torch.as_tensor(stride_x), torch.as_tensor(stride_y)]).to(centres)
    half = anchor_half_sizes(device)[None] * stride  # [1, A, 2]
    return torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)


def encode(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """xyxy boxes matched to xyxy anchors -> (dy, dx, dh, dw)."""
    ha = anchors[:, 3] - anchors[:, 1] + CODER_EPS
    wa = anchors[:, 2] - anchors[:, 0] + CODER_EPS
    h = boxes[:, 3] - boxes[:, 1] + CODER_EPS
    w = boxes[:, 2] - boxes[:, 0] + CODER_EPS
    dy = ((boxes[:, 1] + boxes[:, 3]) - (anchors[:, 1] + anchors[:, 3])) / 2 / ha
    dx = ((boxes[:, 0] + boxes[:, 2]) - (anchors[:, 0] + anchors[:, 2])) / 2 / wa
    return torch.stack([dy, dx, torch.log(h / ha), torch.log(w / wa)], dim=-1)


def decode(codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(dy, dx, dh, dw) [..., 4] on xyxy anchors [..., 4] -> xyxy boxes."""
    ha = anchors[..., 3] - anchors[..., 1]
    wa = anchors[..., 2] - anchors[..., 0]
    cy = (anchors[..., 1] + anchors[..., 3]) / 2 + codes[..., 0] * ha
    cx = (anchors[..., 0] + anchors[..., 2]) / 2 + codes[..., 1] * wa
    h = codes[..., 2].clamp(max=MAX_LOG_SIZE).exp() * ha
    w = codes[..., 3].clamp(max=MAX_LOG_SIZE).exp() * wa
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
