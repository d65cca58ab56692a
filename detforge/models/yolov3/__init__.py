"""YOLOv3 (Darknet-53 / -SPP / -tiny, the layer layout of Darknet's cfgs), with ASFF and the
bag-of-freebies recipe; reads and writes Darknet .weights files."""

from detforge.models.yolov3.anchors import best_possible_recall, fit_anchors, mean_best_iou
from detforge.models.yolov3.darknet_weights import load_darknet_weights, load_weights, save_darknet_weights
from detforge.models.yolov3.model import SIZES, YOLOv3, build_yolov3
from detforge.models.yolov3.options import prepare_anchors, yolov3_options
from detforge.models.yolov3.recipe import yolov3_recipe
from detforge.models.zoo import ModelSpec, register


def _prepare(num_anchors: int):
    def prepare(cfg, train_samples) -> dict:
        return prepare_anchors(cfg, train_samples, num_anchors)

    return prepare


for _name, _size in SIZES.items():
    register(ModelSpec(
        name=_name,
        family="yolov3",
        build=build_yolov3(_name),
        description=_size.description + "; asff=true adds adaptive fusion",
        defaults=yolov3_recipe,
        options=yolov3_options,
        load_weights=load_weights,
        prepare=_prepare(6 if _size.tiny else 9),
    ))

__all__ = [
    "SIZES", "YOLOv3", "best_possible_recall", "build_yolov3", "fit_anchors", "load_darknet_weights",
    "mean_best_iou", "prepare_anchors", "save_darknet_weights", "yolov3_options", "yolov3_recipe",
]
