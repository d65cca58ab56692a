"""The layers a D-FINE decoder query passes through: self-attention, multi-scale deformable
cross-attention around its reference box, a gated residual, the FFN, and the quality head that
scores a box from the sharpness of its edge distributions; plus the small MLP heads.

Attribute names follow the official state dict (``decoder.layers.0.cross_attn.sampling_offsets``,
``gateway.gate``, ``lqe_layers.0.reg_conf``...) so official checkpoints load by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def prior_bias(prob: float) -> float:
    """Logit bias that makes sigmoid(bias) == prob."""
    return -math.log((1 - prob) / prob)


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, cin: int, hidden: int, cout: int, num_layers: int) -> None:
        super().__init__()
        dims = [cin] + [hidden] * (num_layers - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DeformableAttention(nn.Module):
    """Multi-scale deformable attention around reference boxes, with its own point count per
    level. Offsets are scaled by the box size / points of the level; there is no value or output
    projection (D-FINE feeds the encoder memory directly)."""

    def __init__(self, dim: int, heads: int, points: tuple[int, ...], offset_scale: float = 0.5) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.points = tuple(points)
        self.offset_scale = offset_scale
        total = sum(self.points)
        self.register_buffer(
            "num_points_scale", torch.tensor([1.0 / n for n in self.points for _ in range(n)], dtype=torch.float32)
        )
        self.sampling_offsets = nn.Linear(dim, heads * total * 2)
        self.attention_weights = nn.Linear(dim, heads * total)
        self._init_weights()

    def _init_weights(self) -> None:
        # each head starts looking along its own direction, point k of a level k steps out
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.cat([torch.arange(1, n + 1, dtype=torch.float32) for n in self.points])
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((directions[:, None, :] * steps[None, :, None]).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query: Tensor, ref_boxes: Tensor, values: list[Tensor]) -> Tensor:
        """query [B, Q, C]; ref_boxes [B, Q, 4] cxcywh in 0..1; values: per level [B*heads, C/heads, H, W]."""
        b, q, _ = query.shape
        total = sum(self.points)
        pairs = self.heads * total
        # Offsets stay flat, [B, Q, heads * points * 2] (x, y innermost), and the per-point scale
        # and the reference box size are laid out the same way: every broadcast then runs over a
        # long innermost axis, which ONNX runtimes do far faster than the 5-D form with trailing
        # axes of 1 or 2 (same products in the same order, so the values are unchanged).
        point_scale = self.num_points_scale.to(query.dtype)[:, None].expand(total, 2).repeat(self.heads, 1).flatten()
        ref_xy = ref_boxes[..., :2].repeat(1, 1, pairs)
        ref_wh = ref_boxes[..., 2:].repeat(1, 1, pairs)
        locations = ref_xy + self.sampling_offsets(query) * point_scale * ref_wh * self.offset_scale
        # grid_sample wants [-1, 1] coordinates, one batch entry per (image, head); points before
        # queries, so the per-level results join along a long axis
        grids = (2 * locations - 1).reshape(b, q, self.heads, total, 2).permute(0, 2, 3, 1, 4).flatten(0, 1)
        sampled = [
            F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            for value, grid in zip(values, grids.split(self.points, dim=1))
        ]  # each [B*heads, C/heads, points of the level, Q]
        weights = self.attention_weights(query).reshape(b, q, self.heads, total).softmax(-1)
        weights = weights.permute(0, 2, 3, 1).reshape(b * self.heads, 1, total, q)
        out = (torch.cat(sampled, dim=2) * weights).sum(2)  # [B*heads, C/heads, Q]
        return out.reshape(b, -1, q).transpose(1, 2)


class Gate(nn.Module):
    """Blends the residual stream and the cross-attention output with learned sigmoid gates."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, 2 * dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, prior_bias(0.5))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, update: Tensor) -> Tensor:
        g1, g2 = torch.sigmoid(self.gate(torch.cat([x, update], dim=-1))).chunk(2, dim=-1)
        return self.norm(g1 * x + g2 * update)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, points: tuple[int, ...]) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, heads, points)
        self.gateway = Gate(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm3 = nn.LayerNorm(dim)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: Tensor, ref_boxes: Tensor, values: list[Tensor], pos: Tensor,
                attn_mask: Tensor | None) -> Tensor:
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, value=x, attn_mask=attn_mask, need_weights=False)[0])
        x = self.gateway(x, self.cross_attn(x + pos, ref_boxes, values))
        x = x + self.linear2(F.relu(self.linear1(x)))
        # keep fp16 activations finite before the norm
        return self.norm3(x.clamp(min=-65504, max=65504))


class QualityHead(nn.Module):
    """Location Quality Estimator: adds a score from the sharpness of the edge distributions
    (top-k bin probabilities and their mean) to the class logits."""

    def __init__(self, reg_max: int, top_k: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.top_k = top_k
        self.reg_max = reg_max
        self.reg_conf = MLP(4 * (top_k + 1), hidden, 1, 2)
        nn.init.zeros_(self.reg_conf.layers[-1].weight)
        nn.init.zeros_(self.reg_conf.layers[-1].bias)

    def forward(self, logits: Tensor, corners: Tensor) -> Tensor:
        b, q, _ = corners.shape
        probs = corners.reshape(b, q, 4, self.reg_max + 1).softmax(-1)
        top = probs.topk(self.top_k, dim=-1).values
        stats = torch.cat([top, top.mean(-1, keepdim=True)], dim=-1)
        return logits + self.reg_conf(stats.reshape(b, q, -1))


class DecoderStack(nn.Module):
    """The decoder layers and their quality heads (``decoder.decoder.*`` in the state dict)."""

    def __init__(self, layers: list[DecoderLayer], reg_max: int, up: nn.Parameter, reg_scale: nn.Parameter) -> None:
        super().__init__()
        self.up = up
        self.reg_scale = reg_scale
        self.layers = nn.ModuleList(layers)
        self.lqe_layers = nn.ModuleList(QualityHead(reg_max) for _ in layers)
