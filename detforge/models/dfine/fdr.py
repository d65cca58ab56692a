"""Fine-grained Distribution Refinement (FDR) maths shared by the D-FINE decoder and its loss.

A box is refined as four edge distributions over ``reg_max + 1`` bins. The bins are not evenly
spaced: the weighting function W(n) puts fine steps near zero offset (small corrections) and coarse
steps towards the ends (large corrections), bounded by ``±2 * up * reg_scale``. A distance is the
expectation of W(n) under the softmax of the edge logits, in units of the reference box size
divided by ``reg_scale``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype).reshape(-1)[:1]
    return torch.tensor([float(value)], device=like.device, dtype=like.dtype)


def weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor | float) -> Tensor:
    """W(n) for n = 0..reg_max as a 1-D tensor of ``reg_max + 1`` bin values.

    ``up`` (shape [1]) scales the outer bound, ``reg_scale`` the curvature: the inner bins grow
    geometrically with ratio ``(|up * reg_scale| + 1) ** (2 / (reg_max - 2))``, the two end bins
    sit at ``±2 * |up * reg_scale|`` and the middle bin is exactly 0.
    """
    if reg_max < 4 or reg_max % 2:
        raise ValueError(f"weighting_function: reg_max must be an even number >= 4, got {reg_max}")
    up = up.reshape(-1)[:1]
    bound = up.abs() * _as_tensor(reg_scale, up).abs()
    ratio = (bound + 1) ** (2.0 / (reg_max - 2))
    powers = torch.arange(1, reg_max // 2, device=up.device, dtype=up.dtype)
    right = ratio**powers - 1
    zero = torch.zeros_like(bound)
    return torch.cat([-2 * bound, -right.flip(0), zero, right, 2 * bound])


def distribution_to_distance(corner_logits: Tensor, bins: Tensor) -> Tensor:
    """Expected edge offsets: ``[..., 4 * (reg_max + 1)]`` logits -> ``[..., 4]`` distances."""
    num_bins = bins.numel()
    probs = F.softmax(corner_logits.reshape(*corner_logits.shape[:-1], 4, num_bins), dim=-1)
    return probs @ bins.to(probs.dtype)


def distance2bbox(points: Tensor, distance: Tensor, reg_scale: Tensor | float) -> Tensor:
    """Decode edge distances (left, top, right, bottom) around reference boxes ``points``
    (cx, cy, w, h) into boxes (cx, cy, w, h).

    A distance of 0 puts an edge half a box away from the centre, i.e. returns the reference box;
    each unit moves the edge by ``size / reg_scale``.
    """
    scale = _as_tensor(reg_scale, points).abs() if isinstance(reg_scale, Tensor) else abs(float(reg_scale))
    half = 0.5 * scale
    cx, cy, w, h = points.unbind(-1)
    x1 = cx - (half + distance[..., 0]) * (w / scale)
    y1 = cy - (half + distance[..., 1]) * (h / scale)
    x2 = cx + (half + distance[..., 2]) * (w / scale)
    y2 = cy + (half + distance[..., 3]) * (h / scale)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
