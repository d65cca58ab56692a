"""torchvision's Faster R-CNN and Mask R-CNN behind detforge's ``DetectionModel``.

The networks are torchvision's own builders, used as shipped and built with
``weights=None, weights_backbone=None`` (detforge never downloads): ``fasterrcnn_resnet50_fpn_v2``,
``maskrcnn_resnet50_fpn_v2`` (Li et al. 2021's improved R50-FPN recipe: BatchNorm in the FPN,
RPN and RoI heads, a 4-conv + 1-fc box head, two RPN convs) and
``fasterrcnn_mobilenet_v3_large_fpn``. Their ``transform``, ``backbone``, ``rpn`` and
``roi_heads`` become this module's children under the same names, so the state dict has
torchvision's parameter names and torchvision's own checkpoint files load by name
(``weights.py``).

What differs from calling the torchvision model directly, and why:

- the transform does not resize (``transform.py``): detforge has letterboxed each image to
  ``imgsz`` already; ImageNet normalisation and the padding to 32 stay torchvision's;
- classes: torchvision reserves index 0 for background, so its ``num_classes`` is detforge's
  plus one; labels go in as ``label + 1`` and come out as ``label - 1``;
- the 15 lines of ``GeneralizedRCNN.forward`` are repeated here (same calls, same order) so
  evaluation stops before torchvision pastes every mask into a full-image float tensor
  (``postprocess`` pastes straight into uint8, ``detforge.models.masks``), and so training
  drops a degenerate target box (zero width or height after augmentation) with a warning
  instead of failing the whole step on torchvision's assertion;
- inference keeps more candidates than torchvision's defaults, as detforge's other families do
  for mAP: class score threshold 0.001 (torchvision: 0.05) and ``max_det`` detections per
  image (torchvision: 100, also detforge's default here; ``max_det=`` changes it);
- ``export_forward`` runs the same modules on the whole batch as one tensor (``batched.py``),
  so one ONNX graph serves any batch size.

Backbone freezing follows torchvision's builders: from scratch every backbone stage trains
(and MobileNet keeps ordinary BatchNorm); started from weights (``pretrained=``) the first
stages stay frozen (3 trainable, torchvision's default for trained weights) and MobileNet's
backbone uses ``FrozenBatchNorm2d``, as torchvision builds them for COCO fine-tuning.
``trainable_backbone_layers=`` overrides the count.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.ops.misc import FrozenBatchNorm2d

from detforge.models.base import DetectionModel
from detforge.models.masks import paste_masks
from detforge.models.rcnn.batched import detect
from detforge.models.rcnn.transform import NoResizeTransform

LOG = logging.getLogger("detforge")

# torchvision's defaults are 0.05 and 100; detforge's families keep low-score candidates for mAP
SCORE_THRESH = 0.001
DETECTIONS_PER_IMAGE = 100
# evaluation runs at most this many images through the RoI heads at once: each image's 1000
# proposals hold 1000 x 256 x 7 x 7 pooled features (50 MB), and R50-FPN v2's 4-conv box head
# keeps four such tensors; a 32-image validation batch would need several GB at once
EVAL_CHUNK = 8


class Arch:
    """One torchvision builder and what detforge needs to know about it."""

    def __init__(self, builder: Callable[..., nn.Module], masks: bool, backbone: str,
                 trainable_from_scratch: int, frozen_bn_when_pretrained: bool, description: str) -> None:
        self.builder = builder
        self.masks = masks
        self.backbone = backbone  # torchvision classification model whose weights fit backbone.body
        self.trainable_from_scratch = trainable_from_scratch
        self.frozen_bn_when_pretrained = frozen_bn_when_pretrained
        self.description = description


TRAINABLE_WHEN_PRETRAINED = 3  # torchvision's default for trained weights, every builder here

ARCHS: dict[str, Arch] = {
    "faster-rcnn-r50": Arch(tvd.fasterrcnn_resnet50_fpn_v2, False, "resnet50", 5, False,
                            "Faster R-CNN R50-FPN v2 (torchvision): two-stage, RPN + RoI box head; NMS"),
    "mask-rcnn-r50": Arch(tvd.maskrcnn_resnet50_fpn_v2, True, "resnet50", 5, False,
                          "Mask R-CNN R50-FPN v2 (torchvision): Faster R-CNN + RoI mask head; boxes and instance masks"),
    "faster-rcnn-mbv3": Arch(tvd.fasterrcnn_mobilenet_v3_large_fpn, False, "mobilenet_v3_large", 6, True,
                             "Faster R-CNN MobileNetV3-Large FPN (torchvision): the CPU-friendly two-stage detector"),
}

# trust-ratio logs (CoolDet): CNN body, feature pyramid, RPN, RoI box head, RoI mask head
MODULE_GROUPS = (
    ("backbone", ("backbone.body.",)),
    ("fpn", ("backbone.fpn.",)),
    ("rpn", ("rpn.",)),
    ("roi_box_head", ("roi_heads.box_head.", "roi_heads.box_predictor.")),
    ("roi_mask_head", ("roi_heads.mask_head.", "roi_heads.mask_predictor.")),
)


def freeze_backbone_stages(body: nn.Module, trainable: int) -> None:
    """torchvision's rule for which backbone stages train (its builders apply it only when they
    load weights themselves, which detforge never asks them to): ResNet trains the last
    ``trainable`` of layer4, layer3, layer2, layer1, conv1 (bn1 too at 5); MobileNet the
    blocks from the ``trainable``-th last stage start on."""
    names = [n for n, _ in body.named_children()]
    if "layer4" in names:
        if not 0 <= trainable <= 5:
            raise ValueError(f"trainable_backbone_layers must be 0..5 for a ResNet backbone, got {trainable}")
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
        for name, p in body.named_parameters():
            if not name.startswith(tuple(train)):
                p.requires_grad_(False)
        return
    blocks = list(body.children())
    stages = [0] + [i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False)] + [len(blocks) - 1]
    if not 0 <= trainable <= len(stages):
        raise ValueError(f"trainable_backbone_layers must be 0..{len(stages)} for this backbone, got {trainable}")
    freeze_before = len(blocks) if trainable == 0 else stages[len(stages) - trainable]
    for block in blocks[:freeze_before]:
        for p in block.parameters():
            p.requires_grad_(False)


def freeze_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm2d under ``module`` by torchvision's FrozenBatchNorm2d (eps as
    torchvision's builders give it); returns how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
            count += 1
        else:
            count += freeze_batchnorm(child)
    return count


class TorchvisionRCNN(DetectionModel):
    family = "rcnn"
    stride = 32  # torchvision pads to 32; P6 is a stride-2 max-pool of P5 and takes any size
    backbone_prefixes = ("backbone.body.",)
    module_groups = MODULE_GROUPS

    def __init__(
        self,
        num_classes: int,
        arch: str = "faster-rcnn-mbv3",
        pretrained: str | None = None,
        trainable_backbone_layers: int | None = None,
        score_thresh: float = SCORE_THRESH,
        detections_per_img: int = DETECTIONS_PER_IMAGE,
    ) -> None:
        super().__init__(num_classes)
        if arch not in ARCHS:
            raise ValueError(f"unknown R-CNN architecture '{arch}'; allowed: {', '.join(ARCHS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        spec = ARCHS[arch]
        self.arch = arch
        self.supports_masks = spec.masks
        trained = pretrained is not None
        layers = trainable_backbone_layers
        if layers is None:
            layers = TRAINABLE_WHEN_PRETRAINED if trained else spec.trainable_from_scratch
        net = spec.builder(
            weights=None, weights_backbone=None, num_classes=num_classes + 1,  # + background
            box_score_thresh=float(score_thresh), box_detections_per_img=int(detections_per_img),
        )
        freeze_backbone_stages(net.backbone.body, int(layers))
        if trained and spec.frozen_bn_when_pretrained:
            freeze_batchnorm(net.backbone.body)
        self.transform = NoResizeTransform(net.transform.image_mean, net.transform.image_std,
                                           net.transform.size_divisible)
        self.backbone = net.backbone
        self.rpn = net.rpn
        self.roi_heads = net.roi_heads
        self._degenerate_dropped = 0
        if trained:
            from detforge.models.rcnn.weights import load_torchvision_weights

            self.load_report = load_torchvision_weights(self, pretrained)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Weights saved from a backbone with FrozenBatchNorm2d (a MobileNet trained from
        pretrained weights, torchvision's COCO file) carry no ``num_batches_tracked``; a model
        rebuilt from its name alone has BatchNorm2d there (eps 1e-3, FrozenBatchNorm2d's is
        1e-5), so it takes the frozen form first and computes what was trained."""
        spec = ARCHS[self.arch]
        counters = [k for k in self.state_dict() if k.startswith("backbone.body.") and k.endswith("num_batches_tracked")]
        if spec.frozen_bn_when_pretrained and counters and any(k.startswith("backbone.body.") for k in state_dict) \
                and not any(k.startswith("backbone.body.") and k.endswith("num_batches_tracked") for k in state_dict):
            freeze_batchnorm(self.backbone.body)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ forward
    def _torchvision_targets(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        out = []
        dropped = 0
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(images.dtype).reshape(-1, 4)
            good = (boxes[:, 2:] > boxes[:, :2]).all(1)
            dropped += int((~good).sum())
            item = {"boxes": boxes[good], "labels": t["labels"].reshape(-1)[good].to(torch.int64) + 1}
            if self.supports_masks:
                if "masks" not in t:
                    raise ValueError(
                        f"{self.arch} trains on instance masks, but the targets of image {i} in this batch have none "
                        "(a dataset with polygons or RLE gives them); for boxes alone use a faster-rcnn model"
                    )
                item["masks"] = t["masks"][good]
            out.append(item)
        if dropped:
            self._degenerate_dropped += dropped
            LOG.warning("%s: %d target boxes with zero width or height dropped from this batch (%d so far)",
                        self.arch, dropped, self._degenerate_dropped)
        return out

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """Training (with targets): torchvision's loss dict (loss_classifier, loss_box_reg,
        loss_objectness, loss_rpn_box_reg[, loss_mask]; each weight 1 as in torchvision).
        Evaluation: torchvision's per-image detections (labels 1-based, masks as RoI maps)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB in 0..1, got shape {tuple(images.shape)}")
        tv_targets = None
        if self.training:
            if targets is None:
                raise ValueError(f"{self.arch}: training forward needs targets (boxes, labels)")
            tv_targets = self._torchvision_targets(images, targets)
        elif images.shape[0] > EVAL_CHUNK:
            # every image is processed on its own after the backbone anyway (eval-mode norms);
            # chunks bound the RoI-head memory of a large validation batch
            return [det for chunk in images.split(EVAL_CHUNK) for det in self(chunk)]
        image_list, tv_targets = self.transform(list(images), tv_targets)
        features = self.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, proposal_losses = self.rpn(image_list, features, tv_targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, tv_targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        return detections

    def postprocess(self, outputs: Any, input_hw: tuple[int, int], max_det: int = 300) -> list[dict[str, torch.Tensor]]:
        results = []
        for det in outputs:
            keep = slice(0, int(max_det))  # torchvision sorts by score already
            res = {"boxes": det["boxes"][keep], "scores": det["scores"][keep], "labels": det["labels"][keep] - 1}
            if "masks" in det:
                res["masks"] = paste_masks(det["masks"][keep], res["boxes"], input_hw)
            results.append(res)
        return results

    # ------------------------------------------------------------------ deployment
    @property
    def export_output_names(self) -> tuple[str, ...]:
        return ("boxes", "scores", "labels", "masks") if self.supports_masks else ("boxes", "scores", "labels")

    def export_forward(self, images: torch.Tensor, max_det: int = 300) -> tuple[torch.Tensor, ...]:
        """(boxes [B,K,4], scores [B,K], labels [B,K][, masks [B,K,28,28] RoI probabilities]),
        K = ``max_det``; masks are pasted into the image by ``detforge.models.masks.paste_masks``."""
        return detect(self, images, int(max_det))

    @staticmethod
    def recipe() -> dict[str, Any]:
        from detforge.models.rcnn.recipe import rcnn_recipe

        return rcnn_recipe(epochs=0)


def build_rcnn(arch: str):
    def build(num_classes: int, pretrained: str | None = None, **kwargs) -> TorchvisionRCNN:
        return TorchvisionRCNN(num_classes, arch=arch, pretrained=pretrained, **kwargs)

    return build
