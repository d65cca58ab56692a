"""Published weights, by model name and weights name: ``pretrained=NAME`` looks them up here.

One naming scheme: the weights name says what the weights were trained on, and it is looked up
under the model being built, so ``model=dfine-s pretrained=obj2coco`` means "D-FINE-S, the
Objects365 -> COCO checkpoint its authors publish". Names in use:

- ``coco``      the publisher's COCO detector
- ``obj2coco``  pre-trained on Objects365, then fine-tuned on COCO (D-FINE)
- ``obj365``    trained on Objects365 only (D-FINE; its authors recommend it for fine-tuning)
- ``imagenet``  an ImageNet-classification backbone only; the detector's other layers start fresh

Every figure below is what the publisher reports, copied from the place named in ``source``:
parameters in millions, download size in MB, COCO val2017 box AP (``ap_note`` says when the
publisher reports another number). A test checks the torchvision and timm rows against those
libraries' own weight tables. Entries for model families that are not installed are kept:
they are data, and nothing looks them up until such a model is asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlparse

# torch.hub's convention: a file named NAME-<hex>.EXT publishes the first hex digits of its
# sha256 (torchvision, timm and effdet name their files so)
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass(frozen=True)
class PublishedWeights:
    name: str  # the value of pretrained=
    url: str
    trained_on: str
    source: str  # who publishes it and where its figures are reported
    licence: str
    params_m: float | None = None
    file_mb: float | None = None
    coco_ap: float | None = None
    ap_note: str = ""
    part: str = "detector"  # "detector" or "backbone" (ImageNet classification weights)

    @property
    def filename(self) -> str:
        return PurePosixPath(urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str | None:
        """The hash prefix in the publisher's file name, checked by torch.hub while downloading;
        None when the publisher gives none (the size and sha256 are then recorded on first download)."""
        m = _HASH_IN_NAME.search(self.filename)
        return m.group(1) if m else None


# ------------------------------------------------------------------ D-FINE (official)
_DFINE = "https://github.com/Peterande/storage/releases/download/dfinev1.0/"
_DFINE_SRC = "Peterande/D-FINE README (Model Zoo)"
_APACHE = "Apache-2.0"


def _dfine(size: str, params: float, coco: float, obj2coco: float | None, obj365: tuple[str, float] | None):
    out = [PublishedWeights("coco", f"{_DFINE}dfine_{size}_coco.pth", "COCO", _DFINE_SRC, _APACHE, params, None, coco)]
    if obj2coco is not None:
        # the L checkpoint published for obj2coco is the 25-epoch one (file name ..._e25)
        file = f"dfine_{size}_obj2coco{'_e25' if size == 'l' else ''}.pth"
        out.append(PublishedWeights("obj2coco", _DFINE + file, "Objects365 -> COCO", _DFINE_SRC, _APACHE,
                                    params, None, obj2coco))
    if obj365 is not None:
        file, ap = obj365
        out.append(PublishedWeights("obj365", _DFINE + file, "Objects365", _DFINE_SRC, _APACHE, params, None, None,
                                    f"Objects365 val AP {ap}; 366 classes, the class heads start fresh"))
    return out


# ------------------------------------------------------------------ torchvision
_TV = "https://download.pytorch.org/models/"
_TV_SRC = "torchvision weight enums (models.detection), COCO-val2017 box_map"
_TV_LIC = "BSD-3-Clause (torchvision); COCO's terms apply to the weights"


# ------------------------------------------------------------------ effdet / timm
_EFFDET = "https://github.com/rwightman/efficientdet-pytorch/releases/download/v0.1/"
_EFFDET_SRC = "rwightman/efficientdet-pytorch README + effdet/config/model_config.py"
_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_TIMM_SRC = "timm pretrained_cfg tf_efficientnet_bN.ns_jft_in1k (timm's default tag)"


def _efficientdet(d: int, params: float, ap: float, coco_file: str, backbone_file: str):
    return [
        PublishedWeights("coco", _EFFDET + coco_file, "COCO", _EFFDET_SRC, _APACHE, params, None, ap,
                         f"tf_efficientdet_d{d} (ported from the official TensorFlow release)"),
        PublishedWeights("imagenet", _TIMM + backbone_file, "ImageNet-1k (+JFT noisy student)", _TIMM_SRC, _APACHE,
                         None, None, None, f"tf_efficientnet_b{d} backbone only", part="backbone"),
    ]


# ------------------------------------------------------------------ Darknet
_DARKNET = "https://pjreddie.com/media/files/"
_DARKNET_SRC = "pjreddie.com/darknet/yolo (AP50 table); YOLOv3 paper Table 3 (AP); file sizes as listed in AlexeyAB/darknet's README"
_DARKNET_LIC = "public domain (Darknet's YOLO LICENSE v2)"


PUBLISHED: dict[str, tuple[PublishedWeights, ...]] = {
    "dfine-n": tuple(_dfine("n", 4, 42.8, None, None)),
    "dfine-s": tuple(_dfine("s", 10, 48.5, 50.7, ("dfine_s_obj365.pth", 31.0))),
    "dfine-m": tuple(_dfine("m", 19, 52.3, 55.1, ("dfine_m_obj365.pth", 38.6))),
    "dfine-l": tuple(_dfine("l", 31, 54.0, 57.3, ("dfine_l_obj365_e25.pth", 44.7))),
    "dfine-x": tuple(_dfine("x", 62, 55.8, 59.3, ("dfine_x_obj365.pth", 49.5))),
    "faster-rcnn-r50": (
        PublishedWeights("coco", _TV + "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth", "COCO", _TV_SRC, _TV_LIC,
                         43.712278, 167.104, 46.7, "FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1"),
    ),
    "mask-rcnn-r50": (
        PublishedWeights("coco", _TV + "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", "COCO", _TV_SRC, _TV_LIC,
                         46.359409, 177.219, 47.4, "mask AP 41.8; MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"),
    ),
    "faster-rcnn-mbv3": (
        PublishedWeights("coco", _TV + "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth", "COCO", _TV_SRC, _TV_LIC,
                         19.386354, 74.239, 32.8, "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1"),
    ),
    "efficientdet-d0": tuple(_efficientdet(0, 3.88, 34.2, "tf_efficientdet_d0_34-f153e0cf.pth", "tf_efficientnet_b0_ns-c0e6a31c.pth")),
    "efficientdet-d1": tuple(_efficientdet(1, 6.63, 40.1, "tf_efficientdet_d1_40-a30f94af.pth", "tf_efficientnet_b1_ns-99dd0c41.pth")),
    "efficientdet-d2": tuple(_efficientdet(2, 8.10, 43.4, "tf_efficientdet_d2_43-8107aa99.pth", "tf_efficientnet_b2_ns-00306e48.pth")),
    "efficientdet-d3": tuple(_efficientdet(3, 12.0, 47.1, "tf_efficientdet_d3_47-0b525f35.pth", "tf_efficientnet_b3_ns-9d44bf68.pth")),
    "yolov3": (
        PublishedWeights("coco", _DARKNET + "yolov3.weights", "COCO", _DARKNET_SRC, _DARKNET_LIC, None, 236, 33.0,
                         "AP 33.0 / AP50 57.9 at 608 on test-dev; Darknet .weights format"),
    ),
    "yolov3-spp": (
        PublishedWeights("coco", _DARKNET + "yolov3-spp.weights", "COCO", _DARKNET_SRC, _DARKNET_LIC, None, 240, None,
                         "AP50 60.6 at 608 on test-dev (no AP50-95 published); Darknet .weights format"),
    ),
    "yolov3-tiny": (
        PublishedWeights("coco", _DARKNET + "yolov3-tiny.weights", "COCO", _DARKNET_SRC, _DARKNET_LIC, None, 34, None,
                         "AP50 33.1 at 416 on test-dev (no AP50-95 published); Darknet .weights format"),
    ),
}


def published_for(model: str) -> tuple[PublishedWeights, ...]:
    return PUBLISHED.get(str(model).lower(), ())


def find_published(model: str, name: str) -> PublishedWeights | None:
    for entry in published_for(model):
        if entry.name == str(name).lower():
            return entry
    return None
