"""EfficientDet (Tan et al. 2020, arXiv 1911.09070): an EfficientNet backbone (timm's tf_
variants, whose 'SAME' padding matches the official weights), BiFPN (``bifpn.py``), shared class
and box nets with per-level BatchNorm (``head.py``), 9 anchors per cell (``anchors.py``), focal +
Huber losses (``loss.py``) and class-aware NMS (``postprocess.py``).

Input sizes: any multiple of 32 works (``stride``). The paper's sizes are multiples of 128, where
every level's stride is exactly 2^level; at other sizes P6/P7 come out of 'SAME'-padded pooling
and their anchors are spread by the actual input/map ratio, the same in training, evaluation
and export.
"""

from __future__ import annotations

import timm
import torch

from detforge.models.dense import DenseDetector
from detforge.models.efficientdet.anchors import NUM_ANCHORS, level_anchors
from detforge.models.efficientdet.bifpn import BiFPN
from detforge.models.efficientdet.blocks import Projection, SeparableConv
from detforge.models.efficientdet.head import HeadNet
from detforge.models.efficientdet.loss import EfficientDetLoss
from detforge.models.efficientdet.postprocess import select_candidates
from detforge.models.efficientdet.sizes import NUM_LEVELS, SIZES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientDet(DenseDetector):
    family = "efficientdet"
    stride = 32
    backbone_prefixes = ("backbone.",)

    def __init__(
        self,
        num_classes: int,
        size: str = "d0",
        label_smoothing: float = 0.0,
        drop_path_rate: float = 0.2,
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        huber_delta: float = 0.1,
        box_loss_weight: float = 50.0,
        pre_nms_topk: int = 1000,
        nms_iou: float = 0.5,
        score_thr: float = 0.001,
    ) -> None:
        super().__init__(num_classes)
        if size not in SIZES:
            raise ValueError(f"unknown EfficientDet size '{size}'; allowed: {', '.join(SIZES)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = SIZES[size]
        self.size = size
        self.image_size = cfg.image_size
        # drop_path_rate 0.2: the official stochastic depth of the backbone blocks
        self.backbone = timm.create_model(cfg.backbone, pretrained=False, features_only=True,
                                          out_indices=(2, 3, 4), drop_path_rate=drop_path_rate)
        self.neck = BiFPN(tuple(self.backbone.feature_info.channels()), cfg.channels, cfg.bifpn_layers)
        self.class_head = HeadNet(cfg.channels, cfg.head_layers, NUM_LEVELS, NUM_ANCHORS, num_classes, prior_prob=0.01)
        self.box_head = HeadNet(cfg.channels, cfg.head_layers, NUM_LEVELS, NUM_ANCHORS, 4)
        self.criterion = EfficientDetLoss(num_classes, focal_alpha, focal_gamma, huber_delta, box_loss_weight,
                                          label_smoothing)
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.score_thr = score_thr
        self._anchor_cache: dict[tuple, list[torch.Tensor]] = {}
        # constants, not weights: kept out of the state dict
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """BiFPN outputs P3..P7 for RGB 0..1 images."""
        # checked in eager mode only: under ONNX tracing a Python branch on a shape would be baked in
        if not torch.jit.is_tracing() and (images.ndim != 4 or images.shape[1] != 3):
            raise ValueError(f"images must be [B, 3, H, W] RGB in 0..1, got shape {tuple(images.shape)}")
        x = (images - self.pixel_mean) / self.pixel_std
        return self.neck(self.backbone(x))

    def anchors(self, feats: list[torch.Tensor], input_hw) -> list[torch.Tensor]:
        if torch.jit.is_tracing():  # traced sizes: the graph computes the anchors itself
            return [level_anchors(f.shape[-2:], input_hw, f.device) for f in feats]
        key = (tuple(int(v) for v in input_hw), tuple(tuple(f.shape[-2:]) for f in feats), str(feats[0].device))
        if key not in self._anchor_cache:
            if len(self._anchor_cache) > 16:  # multi-scale training visits a handful of sizes
                self._anchor_cache.clear()
            self._anchor_cache[key] = [level_anchors(tuple(f.shape[-2:]), key[0], f.device) for f in feats]
        return self._anchor_cache[key]

    def raw_outputs(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Per level P3..P7: ``cls`` [B, H*W*9, C] logits, ``box`` [B, H*W*9, 4] (dy, dx, dh, dw)
        codes, ``anchors`` [H*W*9, 4] xyxy input pixels."""
        feats = self.features(images)
        return {"cls": self.class_head(feats), "box": self.box_head(feats),
                "anchors": self.anchors(feats, images.shape[-2:])}

    def candidates(self, outputs: dict[str, list[torch.Tensor]], input_hw):
        return select_candidates(outputs, input_hw, self.pre_nms_topk)

    def deploy(self) -> "EfficientDet":
        """Fold the BiFPN's and heads' BatchNorms into their convs (the heads get a per-level copy
        of each pointwise conv); the timm backbone stays as it is."""
        self.eval()
        for m in self.neck.modules():
            if isinstance(m, (SeparableConv, Projection)):
                m.fuse()
        self.class_head.fuse()
        self.box_head.fuse()
        return self


def build_efficientdet(size: str):
    def build(num_classes: int, **kwargs) -> EfficientDet:
        return EfficientDet(num_classes, size=size, **kwargs)

    return build
