"""FCOS-style anchor-free CNN detector: CSP backbone, PAN neck, shared FCOS head, ATSS targets
(see ``assigner.py`` for why ATSS), focal + GIoU + centerness losses (``loss.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from detforge.models.dense import DenseDetector
from detforge.models.fcos.backbone import CSPBackbone
from detforge.models.fcos.blocks import fuse_conv_bn
from detforge.models.fcos.head import FCOSHead
from detforge.models.fcos.loss import FCOSLoss
from detforge.models.fcos.neck import PAN
from detforge.models.fcos.postprocess import select_candidates

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class FCOSSize:
    widths: tuple[int, int, int, int, int]  # stem, strides 4, 8, 16, 32
    depths: tuple[int, int, int, int]  # bottlenecks per backbone stage
    neck_depth: int
    head_channels: int
    head_convs: int


SIZES: dict[str, FCOSSize] = {
    "n": FCOSSize((16, 32, 64, 112, 192), (1, 2, 2, 1), 1, 64, 2),
    "s": FCOSSize((32, 64, 128, 224, 384), (1, 2, 2, 1), 1, 128, 2),
    "m": FCOSSize((48, 96, 192, 320, 480), (2, 4, 4, 2), 2, 160, 3),
}


class FCOS(DenseDetector):
    family = "fcos"
    stride = STRIDES[-1]
    backbone_prefixes = ("backbone.",)

    def __init__(
        self,
        num_classes: int,
        size: str = "n",
        label_smoothing: float = 0.0,
        pre_nms_topk: int = 1000,
        nms_iou: float = 0.6,
        score_thr: float = 0.001,
        loss_weights: tuple[float, float, float] = (1.0, 2.0, 1.0),
    ) -> None:
        super().__init__(num_classes)
        if size not in SIZES:
            raise ValueError(f"unknown FCOS size '{size}'; allowed: {', '.join(SIZES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = SIZES[size]
        self.size = size
        self.backbone = CSPBackbone(cfg.widths, cfg.depths)
        self.neck = PAN(self.backbone.out_channels, cfg.head_channels, cfg.neck_depth)
        self.head = FCOSHead(num_classes, cfg.head_channels, cfg.head_convs, STRIDES)
        self.criterion = FCOSLoss(num_classes, STRIDES, *loss_weights, label_smoothing=label_smoothing)
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.score_thr = score_thr
        # constants, not weights: kept out of the state dict
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def raw_outputs(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        # checked in eager mode only: under ONNX tracing a Python branch on a shape would be baked in
        if not torch.jit.is_tracing() and (images.ndim != 4 or images.shape[1] != 3):
            raise ValueError(f"images must be [B, 3, H, W] RGB in 0..1, got shape {tuple(images.shape)}")
        x = (images - self.pixel_mean) / self.pixel_std
        return self.head(self.neck(self.backbone(x)))

    def candidates(self, outputs: dict[str, list[torch.Tensor]], input_hw):
        return select_candidates(outputs, input_hw, self.pre_nms_topk)

    def deploy(self) -> "FCOS":
        self.eval()
        fuse_conv_bn(self)
        return self

    @staticmethod
    def recipe() -> dict[str, Any]:
        """AdamW at 1e-3: Adam's per-parameter step sizes suit a from-scratch BN+GN network with
        no pretrained scale to lean on. Measured on fcos-n overfitting 8 synthetic images (100
        steps, clip 10): total loss 0.81 with AdamW 1e-3, 0.94 with SGD 0.01 (Nesterov, momentum
        0.937), 1.18 with SGD 0.04. weight_decay 5e-4 (decoupled) suits sets this small; clip_grad 10
        guards the early GIoU/exp regression steps; warm-up in epochs, so it scales with the
        dataset rather than a COCO iteration count."""
        return {
            "optimizer": "adamw",
            "lr0": 1e-3,
            "lrf": 0.01,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "warmup_epochs": 2.0,
            "warmup_bias_lr": 0.0,
            "clip_grad": 10.0,
            "scheduler": "cosine",
        }


def build_fcos(size: str):
    def build(num_classes: int, **kwargs) -> FCOS:
        return FCOS(num_classes, size=size, **kwargs)

    return build
