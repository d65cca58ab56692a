"""EfficientDet D0-D3 as published (Tan et al. 2020, arXiv 1911.09070, Table 1): the compound
scaling of backbone, BiFPN width/depth, head depth and input resolution."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EfficientDetSize:
    backbone: str  # timm model name; the tf_ variants pad like TensorFlow's 'SAME'
    channels: int  # BiFPN and head width
    bifpn_layers: int
    head_layers: int  # separable convs in the class and box nets before the prediction conv
    image_size: int  # the paper's input resolution


SIZES: dict[str, EfficientDetSize] = {
    "d0": EfficientDetSize("tf_efficientnet_b0", 64, 3, 3, 512),
    "d1": EfficientDetSize("tf_efficientnet_b1", 88, 4, 3, 640),
    "d2": EfficientDetSize("tf_efficientnet_b2", 112, 5, 3, 768),
    "d3": EfficientDetSize("tf_efficientnet_b3", 160, 6, 4, 896),
}

# P3..P7: the backbone gives strides 8, 16, 32; P6 and P7 are pooled from P5
NUM_LEVELS = 5
