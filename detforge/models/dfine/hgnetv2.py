"""HGNetv2 backbone (PP-HGNetV2, as used by D-FINE).

Module and attribute names follow the official D-FINE state dict (``stem.stem1.conv``,
``stages.2.blocks.0.layers.1.conv2.lab.scale``...) so official checkpoints load by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d


@dataclass(frozen=True)
class StageSpec:
    in_ch: int
    mid_ch: int
    out_ch: int
    num_blocks: int
    downsample: bool
    light: bool  # 1x1 + depthwise convs instead of full convs inside the blocks
    kernel: int
    layers_per_block: int


@dataclass(frozen=True)
class HGNetSpec:
    stem: tuple[int, int, int]  # in, mid, out channels
    stages: tuple[StageSpec, ...]


# Widths and depths of the PP-HGNetV2 variants (B0..B6).
ARCHS: dict[str, HGNetSpec] = {
    "B0": HGNetSpec((3, 16, 16), (
        StageSpec(16, 16, 64, 1, False, False, 3, 3),
        StageSpec(64, 32, 256, 1, True, False, 3, 3),
        StageSpec(256, 64, 512, 2, True, True, 5, 3),
        StageSpec(512, 128, 1024, 1, True, True, 5, 3),
    )),
    "B1": HGNetSpec((3, 24, 32), (
        StageSpec(32, 32, 64, 1, False, False, 3, 3),
        StageSpec(64, 48, 256, 1, True, False, 3, 3),
        StageSpec(256, 96, 512, 2, True, True, 5, 3),
        StageSpec(512, 192, 1024, 1, True, True, 5, 3),
    )),
    "B2": HGNetSpec((3, 24, 32), (
        StageSpec(32, 32, 96, 1, False, False, 3, 4),
        StageSpec(96, 64, 384, 1, True, False, 3, 4),
        StageSpec(384, 128, 768, 3, True, True, 5, 4),
        StageSpec(768, 256, 1536, 1, True, True, 5, 4),
    )),
    "B3": HGNetSpec((3, 24, 32), (
        StageSpec(32, 32, 128, 1, False, False, 3, 5),
        StageSpec(128, 64, 512, 1, True, False, 3, 5),
        StageSpec(512, 128, 1024, 3, True, True, 5, 5),
        StageSpec(1024, 256, 2048, 1, True, True, 5, 5),
    )),
    "B4": HGNetSpec((3, 32, 48), (
        StageSpec(48, 48, 128, 1, False, False, 3, 6),
        StageSpec(128, 96, 512, 1, True, False, 3, 6),
        StageSpec(512, 192, 1024, 3, True, True, 5, 6),
        StageSpec(1024, 384, 2048, 1, True, True, 5, 6),
    )),
    "B5": HGNetSpec((3, 32, 64), (
        StageSpec(64, 64, 128, 1, False, False, 3, 6),
        StageSpec(128, 128, 512, 2, True, False, 3, 6),
        StageSpec(512, 256, 1024, 5, True, True, 5, 6),
        StageSpec(1024, 512, 2048, 2, True, True, 5, 6),
    )),
    "B6": HGNetSpec((3, 48, 96), (
        StageSpec(96, 96, 192, 2, False, False, 3, 6),
        StageSpec(192, 192, 512, 3, True, False, 3, 6),
        StageSpec(512, 384, 1024, 6, True, True, 5, 6),
        StageSpec(1024, 768, 2048, 3, True, True, 5, 6),
    )),
}


class LearnableAffine(nn.Module):
    """y = scale * x + bias with two learnable scalars (the "lab" block)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


class ConvNormAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU -> optional learnable affine."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, lab: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU() if act else nn.Identity()
        # the affine block only follows an activation
        self.lab = LearnableAffine() if (act and lab) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))

    @torch.no_grad()
    def fuse(self) -> None:
        """Inference form: the norm folded into the conv, and the affine block with it.

        With scale s and shift b, s * relu(z) + b = max(s*z + b, b) for s >= 0 (min for s < 0):
        s and b go into the conv's weights and bias and the rest is one clamp, which ONNX
        runtimes fuse into the conv. Left as a multiply and an add, the two scalar ops cut
        every conv-activation pair apart (onnxruntime then reorders the layout around each:
        ~10 ms of a 35 ms D-FINE-N at 640, benchmarks/RESULTS.md). Same outputs to ~1e-6.
        """
        if isinstance(self.bn, nn.Identity):
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = self.conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        act: nn.Module = self.act
        if isinstance(self.lab, LearnableAffine):
            s, b = float(self.lab.scale), float(self.lab.bias)
            weight, bias = weight * s, bias * s + b
            act = Clamp(low=b) if s >= 0 else Clamp(high=b)
            self.lab = nn.Identity()
        c = self.conv
        self.conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                              groups=c.groups, bias=True).to(weight.device, weight.dtype)
        self.conv.weight.copy_(weight)
        self.conv.bias.copy_(bias)
        self.bn = nn.Identity()
        self.act = act


class Clamp(nn.Module):
    """x clamped below at ``low`` and/or above at ``high`` (fixed numbers)."""

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=self.low, max=self.high)


class LightConv(nn.Module):
    """Pointwise conv without activation, then a depthwise kxk conv with activation."""

    def __init__(self, cin: int, cout: int, kernel: int, lab: bool) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, 1, act=False, lab=lab)
        self.conv2 = ConvNormAct(cout, cout, kernel, groups=cout, act=True, lab=lab)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class Stem(nn.Module):
    """Stride-4 stem: a strided conv, then a max-pool branch and a two-conv branch concatenated."""

    def __init__(self, cin: int, mid: int, cout: int, lab: bool) -> None:
        super().__init__()
        self.stem1 = ConvNormAct(cin, mid, 3, stride=2, lab=lab)
        self.stem2a = ConvNormAct(mid, mid // 2, 2, lab=lab)
        self.stem2b = ConvNormAct(mid // 2, mid, 2, lab=lab)
        self.stem3 = ConvNormAct(mid * 2, mid, 3, stride=2, lab=lab)
        self.stem4 = ConvNormAct(mid, cout, 1, lab=lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        # 2x2 convs and the pool keep the size thanks to one pixel of right/bottom zero padding.
        # Each conv gets its own pad with an explicit value: exported that way, ONNX Runtime
        # folds a pad into the conv after it (it cannot fold one that has two readers or no
        # value input). The pool keeps an explicit zero pad: a pool's own padding is -inf, which
        # would differ where the lab blocks make activations negative.
        x = self.stem1(x)
        conv_branch = self.stem2a(F.pad(x, (0, 1, 0, 1), value=0.0))
        conv_branch = self.stem2b(F.pad(conv_branch, (0, 1, 0, 1), value=0.0))
        pooled = self.pool(F.pad(x, (0, 1, 0, 1), value=0.0))
        return self.stem4(self.stem3(torch.cat([pooled, conv_branch], dim=1)))


class HGBlock(nn.Module):
    """A chain of convs whose outputs (and the input) are concatenated, then squeezed and
    excited by two 1x1 convs; residual in every block but a stage's first."""

    def __init__(self, cin: int, mid: int, cout: int, num_layers: int, kernel: int,
                 residual: bool, light: bool, lab: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            layer_in = cin if i == 0 else mid
            if light:
                self.layers.append(LightConv(layer_in, mid, kernel, lab))
            else:
                self.layers.append(ConvNormAct(layer_in, mid, kernel, lab=lab))
        total = cin + num_layers * mid
        self.aggregation = nn.Sequential(
            ConvNormAct(total, cout // 2, 1, lab=lab),
            ConvNormAct(cout // 2, cout, 1, lab=lab),
        )

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            features.append(y)
        y = self.aggregation(torch.cat(features, dim=1))
        return y + x if self.residual else y


class HGStage(nn.Module):
    def __init__(self, spec: StageSpec, lab: bool) -> None:
        super().__init__()
        if spec.downsample:
            # depthwise stride-2 conv, no activation
            self.downsample = ConvNormAct(spec.in_ch, spec.in_ch, 3, stride=2, groups=spec.in_ch, act=False, lab=lab)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            HGBlock(spec.in_ch if i == 0 else spec.out_ch, spec.mid_ch, spec.out_ch, spec.layers_per_block,
                    spec.kernel, residual=i > 0, light=spec.light, lab=lab)
            for i in range(spec.num_blocks)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


def _freeze_batch_norms(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by a FrozenBatchNorm2d holding its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batch_norms(child)


class HGNetv2(nn.Module):
    """Returns the feature maps of the stages in ``return_idx`` (strides 4, 8, 16, 32 for 0..3).

    ``frozen_norm`` swaps BatchNorm for FrozenBatchNorm2d (fixed statistics and affine, stored as
    buffers) as the official L and X models do; ``freeze_stem`` stops gradients into the stem.
    """

    def __init__(self, arch: str, lab: bool, return_idx: tuple[int, ...] = (1, 2, 3),
                 frozen_norm: bool = False, freeze_stem: bool = False) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"HGNetv2: unknown variant '{arch}'; known: {', '.join(ARCHS)}")
        spec = ARCHS[arch]
        self.return_idx = tuple(return_idx)
        self.out_channels = [spec.stages[i].out_ch for i in self.return_idx]
        self.out_strides = [4 * 2**i for i in self.return_idx]
        self.stem = Stem(*spec.stem, lab=lab)
        self.stages = nn.ModuleList(HGStage(s, lab) for s in spec.stages)
        if freeze_stem:
            self.stem.requires_grad_(False)
        if frozen_norm:
            _freeze_batch_norms(self)

    def fuse(self) -> None:
        """Inference form of every conv-norm-activation (see ConvNormAct.fuse)."""
        for module in self.modules():
            if isinstance(module, ConvNormAct):
                module.fuse()

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs
