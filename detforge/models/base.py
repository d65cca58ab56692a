"""The interface every detector family implements, so the trainer, evaluator, exporter and
predictor never need to know which family they hold.

Conventions (the same for every family):
- input ``images``: float32 [B, 3, H, W], RGB scaled to 0..1 (a model applies its own
  mean/std inside ``forward`` if it wants one, so exported graphs take the same input);
- ``targets``: one dict per image with ``boxes`` float32 [N, 4] absolute xyxy in input-tensor
  pixels and ``labels`` int64 [N] (0-based); N may be 0 (background image);
- training forward (``model.train()`` and targets given) returns a dict of *weighted* loss
  terms whose sum is the loss to minimise;
- evaluation forward returns the family's raw outputs; ``postprocess`` turns them into one
  dict per image with ``boxes`` (xyxy, input pixels), ``scores`` (descending) and ``labels``;
- a family that predicts instance masks sets ``supports_masks``; its targets then also carry
  ``masks`` (uint8 [N, H, W]) and its postprocess returns ``masks`` too. Other families never
  see masks.

What the engine needs before a model exists (recipe, constructor options from the config,
foreign weight readers) is on the family's ``ModelSpec`` in models/zoo.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DetectionModel(nn.Module):
    family: str = "base"
    # largest feature stride: multi-scale sizes and letterbox padding round to it
    stride: int = 32
    # state-dict prefixes that get ``backbone_lr_mult``
    backbone_prefixes: tuple[str, ...] = ("backbone.",)
    # instance masks in targets and outputs (two-stage mask heads)
    supports_masks: bool = False
    # per-module logs (LARS/LAMB trust ratios): ordered (group, parameter-name prefixes); a
    # parameter joins the first group with a matching prefix, "other" if none. Empty: the
    # engine's rule by name (backbone_prefixes -> backbone, then encoder/neck, decoder, head)
    module_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # names of export_forward's outputs in exported graphs (a mask model adds "masks")
    export_output_names: tuple[str, ...] = ("boxes", "scores", "labels")
    # Data-parallel training needs a gradient for every trainable parameter on every rank at
    # every step. A part that a batch can leave out of the loss (e.g. a head used only when the
    # batch has boxes, when a rank's images are all background) should stay in with a
    # zero-weighted term (``loss + part.sum() * 0``): an exact zero gradient, as DDP would give
    # it, and DDP keeps its fast fixed buckets. Only a family that cannot do that sets this:
    # DDP then walks the autograd graph every step to find unused parameters (slower), and
    # parallel=fsdp is refused.
    find_unused_parameters: bool = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any, input_hw: tuple[int, int], max_det: int = 300) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def export_forward(self, images: torch.Tensor, max_det: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Graph-friendly inference with post-processing inside: (boxes [B,K,4] xyxy input px,
        scores [B,K], labels [B,K]) with a fixed K = max_det."""
        raise NotImplementedError

    def deploy(self) -> "DetectionModel":
        """Switch to the inference form (fused branches, training-only heads dropped)."""
        return self

    @staticmethod
    def loss_group(name: str) -> str:
        """The column a loss term is summed into in logs (e.g. a DETR's per-layer terms
        ``loss_bbox_aux_3`` -> ``loss_bbox``); the identity by default."""
        return name
