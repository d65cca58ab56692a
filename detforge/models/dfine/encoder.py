"""D-FINE hybrid encoder: a transformer layer on the coarsest level (AIFI), then top-down and
bottom-up fusion of all levels with RepVGG-style ELAN blocks (CCFF).

Attribute names follow the official state dict (``input_proj.0.conv``, ``fpn_blocks.0.cv2.0.
bottlenecks.1.conv1.norm``...) so official checkpoints load by name.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class ConvNorm(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional SiLU; ``fuse()`` folds the norm into the conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))

    def fuse(self) -> None:
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.norm.eval())
            self.norm = nn.Identity()


class RepVggBlock(nn.Module):
    """3x3 and 1x1 conv-norm branches summed, then SiLU; ``fuse()`` merges them into one 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(channels, channels, 3)
        self.conv2 = ConvNorm(channels, channels, 1)
        self.act = nn.SiLU()
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def fuse(self) -> None:
        if self.fused is not None:
            return
        big = fuse_conv_bn_eval(self.conv1.conv.eval(), self.conv1.norm.eval())
        small = fuse_conv_bn_eval(self.conv2.conv.eval(), self.conv2.norm.eval())
        fused = nn.Conv2d(big.in_channels, big.out_channels, 3, 1, padding=1, bias=True)
        with torch.no_grad():
            # a 1x1 kernel is a 3x3 kernel that is zero off-centre
            fused.weight.copy_(big.weight + F.pad(small.weight, (1, 1, 1, 1)))
            fused.bias.copy_(big.bias + small.bias)
        self.fused = fused.to(big.weight.device)
        del self.conv1, self.conv2


class CspRepBlock(nn.Module):
    """Two 1x1 branches, one through ``depth`` RepVGG blocks, summed."""

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 1, act=True)
        self.conv2 = ConvNorm(cin, cout, 1, act=True)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(cout) for _ in range(depth)])
        self.conv3 = nn.Identity()  # the official block has hidden == out channels here

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class RepElanBlock(nn.Module):
    """ELAN fusion block (RepNCSPELAN4): split the 1x1 projection in two halves, push the second
    half through two CSP-RepVGG stages, concatenate everything and project."""

    def __init__(self, cin: int, cout: int, split_ch: int, branch_ch: int, depth: int) -> None:
        super().__init__()
        self.half = split_ch // 2
        self.cv1 = ConvNorm(cin, split_ch, 1, act=True)
        self.cv2 = nn.Sequential(CspRepBlock(self.half, branch_ch, depth), ConvNorm(branch_ch, branch_ch, 3, act=True))
        self.cv3 = nn.Sequential(CspRepBlock(branch_ch, branch_ch, depth), ConvNorm(branch_ch, branch_ch, 3, act=True))
        self.cv4 = ConvNorm(split_ch + 2 * branch_ch, cout, 1, act=True)

    def forward(self, x: Tensor) -> Tensor:
        parts = list(self.cv1(x).split((self.half, self.half), dim=1))
        parts.append(self.cv2(parts[-1]))
        parts.append(self.cv3(parts[-1]))
        return self.cv4(torch.cat(parts, dim=1))


class StridedDown(nn.Module):
    """1x1 conv then a depthwise stride-2 3x3 conv (SCDown), both without activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cv1 = ConvNorm(channels, channels, 1)
        self.cv2 = ConvNorm(channels, channels, 3, stride=2, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.cv1(x))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer with GELU feed-forward; positions are added to queries and keys."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        q = x + pos
        x = self.norm1(x + self.self_attn(q, q, value=x, need_weights=False)[0])
        return self.norm2(x + self.linear2(self.act(self.linear1(x))))


class EncoderStack(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn) for _ in range(num_layers))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos)
        return x


def sincos_position_embedding(h: int, w: int, dim: int, temperature: float = 10000.0,
                              device: torch.device | None = None) -> Tensor:
    """2-D sine-cosine embedding [1, h*w, dim] for a feature map flattened row by row.

    The official encoder enumerates the grid with x in the outer loop (``meshgrid(x, y, 'ij')``),
    so for non-square maps position k gets the code of (x = k // h, y = k % h); this is kept, as
    the official weights were trained with it.
    """
    if dim % 4:
        raise ValueError(f"position embedding: dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    # a meshgrid, not repeat_interleave(h): traced for ONNX on a GPU, h becomes a CPU tensor
    # that repeat_interleave uses as an index into a CUDA tensor, and the export fails
    grid_x, grid_y = torch.meshgrid(torch.arange(w, dtype=torch.float32, device=device),
                                    torch.arange(h, dtype=torch.float32, device=device), indexing="ij")
    xs, ys = grid_x.reshape(-1), grid_y.reshape(-1)
    ax = xs[:, None] * freqs[None]
    ay = ys[:, None] * freqs[None]
    return torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=1)[None]


class HybridEncoder(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], dim: int, ffn: int, heads: int = 8,
                 transformer_levels: tuple[int, ...] | None = None, num_transformer_layers: int = 1,
                 expansion: float = 1.0, depth_mult: float = 1.0) -> None:
        super().__init__()
        levels = len(in_channels)
        self.dim = dim
        self.transformer_levels = tuple(transformer_levels) if transformer_levels is not None else (levels - 1,)
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(c, dim, 1, bias=False), norm=nn.BatchNorm2d(dim)))
            for c in in_channels
        )
        self.encoder = nn.ModuleList(
            EncoderStack(dim, heads, ffn, num_transformer_layers) for _ in self.transformer_levels
        )
        branch_ch = round(expansion * dim // 2)
        depth = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList(ConvNorm(dim, dim, 1) for _ in range(levels - 1))
        self.fpn_blocks = nn.ModuleList(RepElanBlock(2 * dim, dim, 2 * dim, branch_ch, depth) for _ in range(levels - 1))
        self.downsample_convs = nn.ModuleList(nn.Sequential(StridedDown(dim)) for _ in range(levels - 1))
        self.pan_blocks = nn.ModuleList(RepElanBlock(2 * dim, dim, 2 * dim, branch_ch, depth) for _ in range(levels - 1))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.input_proj):
            raise ValueError(f"HybridEncoder: expected {len(self.input_proj)} feature maps, got {len(feats)}")
        maps = [proj(f) for proj, f in zip(self.input_proj, feats)]
        for stack, level in zip(self.encoder, self.transformer_levels):
            b, c, h, w = maps[level].shape
            tokens = maps[level].flatten(2).transpose(1, 2)
            pos = sincos_position_embedding(h, w, self.dim, device=tokens.device).to(tokens.dtype)
            maps[level] = stack(tokens, pos).transpose(1, 2).reshape(b, c, h, w)

        # top-down: each coarser map is reduced, upsampled and fused with the next finer one
        top_down = [maps[-1]]
        for k, level in enumerate(range(len(maps) - 1, 0, -1)):
            coarse = self.lateral_convs[k](top_down[0])
            top_down[0] = coarse
            fine = maps[level - 1]
            upsampled = F.interpolate(coarse, size=fine.shape[-2:], mode="nearest")
            top_down.insert(0, self.fpn_blocks[k](torch.cat([upsampled, fine], dim=1)))

        # bottom-up: each finer output is strided down and fused with the next coarser one
        outs = [top_down[0]]
        for k in range(len(maps) - 1):
            down = self.downsample_convs[k](outs[-1])
            outs.append(self.pan_blocks[k](torch.cat([down, top_down[k + 1]], dim=1)))
        return outs

    def fuse(self) -> None:
        """Fold every BatchNorm after a conv into it and merge the RepVGG branches."""
        # RepVGG blocks first: they read their branches' unfused norms
        for module in list(self.modules()):
            if isinstance(module, RepVggBlock):
                module.fuse()
        for module in list(self.modules()):
            if isinstance(module, ConvNorm):
                module.fuse()
