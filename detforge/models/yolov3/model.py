"""YOLOv3 (Redmon & Farhadi 2018) with the layer layout of Darknet's yolov3.cfg, yolov3-spp.cfg
and yolov3-tiny.cfg, so Darknet ``.weights`` files load conv for conv (darknet_weights.py) and
``darknet_layout().to_cfg()`` writes the cfg Darknet or OpenCV builds the same network from.

Input is RGB in 0..1, as Darknet's own (no mean/std). Raw outputs are Darknet's: one map per
level, coarse level first, [B, A * (5 + C), H, W]. ``asff=True`` fuses the pyramid levels
adaptively before the output layers (asff.py); the Darknet convs are unchanged, so Darknet
weights still fill them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from detforge.models.dense import DenseDetector
from detforge.models.yolov3.anchors import as_anchor_array, default_anchors
from detforge.models.yolov3.asff import ASFF
from detforge.models.yolov3.backbone import Darknet53, TinyDarknet
from detforge.models.yolov3.blocks import fuse_conv_bn
from detforge.models.yolov3.darknet_cfg import DarknetLayout
from detforge.models.yolov3.head import YOLOHead
from detforge.models.yolov3.loss import YOLOv3Loss
from detforge.models.yolov3.neck import TinyNeck, YOLOv3Neck
from detforge.models.yolov3.postprocess import select_candidates


@dataclass(frozen=True)
class YOLOv3Size:
    tiny: bool
    spp: bool
    description: str


SIZES: dict[str, YOLOv3Size] = {
    "yolov3": YOLOv3Size(False, False, "YOLOv3: Darknet-53, three-level FPN, 9 anchors (yolov3.cfg; 61.9M params at 80 classes)"),
    "yolov3-spp": YOLOv3Size(False, True, "YOLOv3-SPP: YOLOv3 with a 5/9/13 max-pool SPP block (yolov3-spp.cfg; 63.0M params at 80 classes)"),
    "yolov3-tiny": YOLOv3Size(True, False, "YOLOv3-tiny: 7-conv Darknet, two levels, 6 anchors (yolov3-tiny.cfg; 8.85M params at 80 classes)"),
}


class YOLOv3(DenseDetector):
    family = "yolov3"
    stride = 32
    backbone_prefixes = ("backbone.",)

    def __init__(
        self,
        num_classes: int,
        size: str = "yolov3",
        anchors: Sequence[float] | np.ndarray | None = None,
        imgsz: int = 416,
        asff: bool = False,
        label_smoothing: float = 0.0,
        pre_nms_topk: int = 1000,
        nms_iou: float = 0.6,
        score_thr: float = 0.001,
    ) -> None:
        super().__init__(num_classes)
        if size not in SIZES:
            raise ValueError(f"unknown YOLOv3 size '{size}'; allowed: {', '.join(SIZES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = SIZES[size]
        self.size = size
        if cfg.tiny:
            self.backbone = TinyDarknet()
            self.neck = TinyNeck(self.backbone.out_channels)
        else:
            self.backbone = Darknet53()
            self.neck = YOLOv3Neck(self.backbone.out_channels, spp=cfg.spp)
        self.strides = tuple(reversed(self.backbone.out_strides))  # coarse level first
        levels = len(self.strides)
        self.anchors_per_level = 3
        num_anchors = levels * self.anchors_per_level
        fused = self.neck.out_channels
        self.asff = ASFF(fused) if asff else None
        head_channels = (512, 256) if cfg.tiny else (1024, 512, 256)
        self.head = YOLOHead(fused, head_channels, self.anchors_per_level, num_classes, self.strides)
        arr = default_anchors(num_anchors, imgsz) if anchors is None else as_anchor_array(anchors, num_anchors)
        # a buffer, so checkpoints carry the anchors the head was trained with (fitted ones too)
        self.register_buffer("anchors", torch.as_tensor(arr, dtype=torch.float32))
        self.criterion = YOLOv3Loss(num_classes, self.strides, self.anchors_per_level, label_smoothing=label_smoothing)
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.score_thr = score_thr

    # ------------------------------------------------------------------ forward
    def raw_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        # checked in eager mode only: under ONNX tracing a Python branch on a shape is baked in
        if not torch.jit.is_tracing():
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be [B, 3, H, W] RGB in 0..1, got shape {tuple(images.shape)}")
            if images.shape[-1] % self.stride or images.shape[-2] % self.stride:
                raise ValueError(f"YOLOv3 input sides must be multiples of {self.stride}, got {tuple(images.shape[-2:])}")
        feats = self.neck(self.backbone(images))
        if self.asff is not None:
            feats = self.asff(feats)
        return self.head(feats)

    def compute_loss(self, outputs: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Weighted loss terms of raw outputs (the training forward; also the validation loss)."""
        return self.criterion(outputs, targets, self.anchors)

    def candidates(self, outputs: list[torch.Tensor], input_hw):
        return select_candidates(outputs, self.anchors, self.strides, self.anchors_per_level, input_hw, self.pre_nms_topk)

    def deploy(self) -> "YOLOv3":
        self.eval()
        fuse_conv_bn(self)
        return self

    # ------------------------------------------------------------------ Darknet form
    def darknet_layout(self) -> DarknetLayout:
        """The Darknet sections in cfg order (ASFF, which Darknet cannot express, is left out)."""
        layout = DarknetLayout()
        taps = self.backbone.emit(layout)
        anchors = [tuple(float(v) for v in a) for a in self.anchors.tolist()]
        a = self.anchors_per_level
        levels = len(self.strides)

        def head(level: int) -> None:
            layout.conv(self.head.convs[level])
            layout.conv(self.head.preds[level])
            group = levels - 1 - level
            layout.yolo(list(range(group * a, (group + 1) * a)), anchors, self.num_classes)

        if isinstance(self.neck, TinyNeck):
            layout.conv(self.neck.reduce)
            fused = layout.last
            head(0)
            layout.route(fused)
            layout.conv(self.neck.lateral)
            layout.upsample(2)
            layout.route(layout.last, taps[0])
            head(1)
            return layout
        self.neck.sets[0].emit(layout)
        for level in range(levels):
            if level:
                layout.route(fused)
                layout.conv(self.neck.laterals[level - 1])
                layout.upsample(2)
                layout.route(layout.last, taps[levels - 1 - level])
                self.neck.sets[level].emit(layout)
            fused = layout.last
            head(level)
        return layout


def build_yolov3(size: str):
    def build(num_classes: int, **kwargs) -> YOLOv3:
        return YOLOv3(num_classes, size=size, **kwargs)

    return build
