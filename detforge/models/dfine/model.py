"""D-FINE as a detforge DetectionModel: HGNetv2 backbone, hybrid encoder, D-FINE decoder.

Inputs are RGB in 0..1 with no mean/std normalisation, as in the official pipeline (its
transforms end with ConvertPILImage(scale=True)), so official checkpoints see what they expect.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from detforge.models.base import DetectionModel
from detforge.models.dfine.decoder import DFineDecoder
from detforge.models.dfine.dense_class import DenseClassHead, dense_class_loss
from detforge.models.dfine.encoder import HybridEncoder
from detforge.models.dfine.hgnetv2 import HGNetv2
from detforge.models.dfine.postprocess import to_detections, topk_detections
from detforge.models.dfine.recipe import small_data_recipe
from detforge.models.dfine.sizes import DFineSize, size_settings


class DFine(DetectionModel):
    """``DFine("n", num_classes=3)``; ``pretrained=PATH`` loads an official checkpoint file.

    ``freeze_norm``: None follows the official setting of the size (FrozenBatchNorm2d and a frozen
    stem for L and X) when starting from official weights, and trains every norm when starting
    from scratch (frozen statistics of random weights would leave the backbone unnormalised).
    ``loss_options`` go to DFineCriterion (here ``use_mal`` defaults to True); ``overrides``
    replace fields of the size's settings (see sizes.DFineSize), e.g. ``num_queries=100``.
    ``o2m`` = k > 0 trains an extra group of ``o2m_queries`` (default: num_queries) queries
    matched one-to-many, each object k times (H-DETR); training only: eval, export and deploy
    outputs are those of the same weights without it. ``enc_o2m`` = k > 0 also supervises every
    encoder cell, matching each object to k of them (training only, the same heads).
    ``dense_cls`` = w > 0 adds a training-only per-cell class head on the encoder's maps, its
    focal loss scaled by w (see dense_class); ``deploy`` drops it.
    """

    family = "dfine"
    stride = 32
    backbone_prefixes = ("backbone.",)

    def __init__(self, size: str, num_classes: int, pretrained: str | None = None,
                 freeze_norm: bool | None = None, loss_options: dict[str, Any] | None = None,
                 o2m: int = 0, o2m_queries: int | None = None, enc_o2m: int = 0, dense_cls: float = 0.0,
                 **overrides: Any) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"D-FINE: num_classes must be >= 1, got {num_classes}")
        super().__init__(num_classes)
        self.size = str(size).lower().removeprefix("dfine-")
        cfg: DFineSize = size_settings(self.size, **overrides)
        self.settings = cfg
        from_weights = pretrained is not None
        frozen = cfg.frozen_norm and from_weights if freeze_norm is None else bool(freeze_norm)
        self.backbone = HGNetv2(cfg.backbone, cfg.lab, cfg.return_idx, frozen_norm=frozen,
                                freeze_stem=cfg.freeze_stem and from_weights)
        encoder = HybridEncoder(cfg.backbone_channels, cfg.enc_dim, cfg.enc_ffn, cfg.enc_heads,
                                expansion=cfg.expansion, depth_mult=cfg.depth_mult)
        # registered after the decoder so the state dict lists keys in the official order
        self.decoder = DFineDecoder(
            self.num_classes, (cfg.enc_dim,) * cfg.num_levels, cfg.feat_strides, dim=cfg.dec_dim, ffn=cfg.dec_ffn,
            heads=cfg.dec_heads, num_layers=cfg.num_layers, num_points=cfg.num_points, num_queries=cfg.num_queries,
            reg_max=cfg.reg_max, reg_scale=cfg.reg_scale, eval_idx=cfg.eval_idx, num_denoising=cfg.num_denoising,
            label_noise_ratio=cfg.label_noise_ratio, box_noise_scale=cfg.box_noise_scale,
            label_drop_ratio=cfg.label_drop_ratio,
            o2m_queries=(cfg.num_queries if o2m_queries is None else int(o2m_queries)) if o2m > 0 else 0,
            enc_dense=enc_o2m > 0,
        )
        self.encoder = encoder
        self._loss_options = dict(loss_options or {})
        if o2m > 0:
            self._loss_options["o2m_repeats"] = int(o2m)
        if enc_o2m > 0:
            self._loss_options["enc_o2m_repeats"] = int(enc_o2m)
        self._criterion: list[nn.Module] = []  # built on first use; kept out of the state dict
        if float(dense_cls) < 0:
            raise ValueError(f"D-FINE: dense_cls must be >= 0, got {dense_cls}")
        self.dense_cls = float(dense_cls)
        if self.dense_cls > 0:
            self.dense_class_head = DenseClassHead(cfg.enc_dim, self.num_classes)
        self.load_report: dict[str, Any] | None = None
        if pretrained is not None:
            from detforge.models.dfine.weights import load_official

            self.load_report = load_official(self, pretrained)

    # ---- training / raw outputs

    def criterion(self) -> nn.Module:
        if not self._criterion:
            # imported here: the loss module imports this package's FDR maths
            from detforge.models.dfine.criterion import DFineCriterion

            # MAL by default: low-IoU matches keep a real gradient, which short runs on small
            # data need (see dfine.recipe); loss_options={"use_mal": False} restores VFL
            options = {"reg_max": self.settings.reg_max, "use_mal": True, **self._loss_options}
            self._criterion.append(DFineCriterion(self.num_classes, **options))
        return self._criterion[0]

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None) -> Any:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"D-FINE: expected images [B, 3, H, W], got {tuple(images.shape)}")
        norm_targets = self._normalise_targets(targets, images) if targets is not None else None
        maps = self.encoder(self.backbone(images))
        outputs = self.decoder(maps, norm_targets)
        if self.training and norm_targets is not None:
            losses = self.criterion()(outputs, norm_targets)
            if hasattr(self, "dense_class_head"):
                # float32 like the criterion, so fp16/bf16 maps are safe
                with torch.autocast(images.device.type, enabled=False):
                    logits = self.dense_class_head([m.float() for m in maps])
                    losses["loss_densecls"] = self.dense_cls * dense_class_loss(logits, norm_targets)
            return losses
        return outputs

    def _normalise_targets(self, targets: list[dict[str, Tensor]], images: Tensor) -> list[dict[str, Tensor]]:
        """Absolute xyxy input pixels -> normalised cxcywh, as the decoder and loss expect."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"D-FINE: {len(targets)} target dicts for a batch of {images.shape[0]} images")
        h, w = images.shape[-2:]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=images.device)
        out = []
        for i, t in enumerate(targets):
            boxes = t["boxes"].to(device=images.device, dtype=torch.float32).reshape(-1, 4)
            labels = t["labels"].to(device=images.device, dtype=torch.long).reshape(-1)
            if len(boxes) != len(labels):
                raise ValueError(f"D-FINE: target {i} has {len(boxes)} boxes but {len(labels)} labels")
            if len(boxes) and not torch.isfinite(boxes).all():
                raise ValueError(f"D-FINE: target {i} has non-finite box coordinates")
            if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"D-FINE: target {i} has labels {int(labels.min())}..{int(labels.max())}, but the model has "
                    f"num_classes={self.num_classes}; labels must be 0-based class indices"
                )
            # clip to the image in corner form, then normalise
            norm = box_convert((boxes / scale).clamp(0.0, 1.0), "xyxy", "cxcywh")
            extra = {k: v for k, v in t.items() if k not in ("boxes", "labels")}
            out.append({**extra, "boxes": norm, "labels": labels})
        return out

    # ---- inference

    def postprocess(self, outputs: dict[str, Tensor], input_hw: tuple[int, int],
                    max_det: int = 300) -> list[dict[str, Tensor]]:
        boxes, scores, labels = topk_detections(outputs["pred_logits"], outputs["pred_boxes"], input_hw, max_det)
        return to_detections(boxes, scores, labels)

    def export_forward(self, images: Tensor, max_det: int = 300) -> tuple[Tensor, Tensor, Tensor]:
        outputs = self.decoder(self.encoder(self.backbone(images)))
        hw = torch._shape_as_tensor(images)[2:] if torch.jit.is_tracing() else tuple(images.shape[-2:])
        return topk_detections(outputs["pred_logits"], outputs["pred_boxes"], hw, max_det)

    def set_decoder_layers(self, layers: int) -> "DFine":
        """Predict from the first ``layers`` decoder layers (every layer's heads are trained, as
        in RT-DETR's speed tuning): each layer dropped saves a fixed share of the decoder's
        per-image cost, usually for a little accuracy (benchmarks/RESULTS.md). Inference only."""
        available = self.decoder.num_layers
        if not 1 <= int(layers) <= available:
            raise ValueError(f"decoder_layers={layers}: this D-FINE-{self.size.upper()} has {available} decoder "
                             f"layers{' left after deploy()' if hasattr(self.decoder, 'project') else ''}; "
                             f"choose 1..{available}")
        self.decoder.eval_idx = int(layers) - 1
        return self

    def deploy(self, fuse_backbone: bool = True) -> "DFine":
        """Inference form: the backbone's conv-norm-activation(-affine) blocks and the encoder's
        RepVGG branches and conv-norm pairs fused, training-only decoder heads and the denoising
        embedding dropped. Eval outputs are unchanged (to float rounding). ``fuse_backbone=False``
        leaves the backbone as the official deploy form does (for bit-level comparisons)."""
        self.eval()
        if fuse_backbone:
            self.backbone.fuse()
        self.encoder.fuse()
        self.decoder.deploy()
        if hasattr(self, "dense_class_head"):
            del self.dense_class_head
        return self

    # ---- logs

    _LOSS_PART = re.compile(r"^(loss_[a-z0-9]+?)(_(aux|dn|pre|enc|o2m)(_\d+)?)*$")

    @staticmethod
    def loss_group(name: str) -> str:
        """D-FINE reports one term per decoder layer, denoising group and encoder head (38 for
        N); logs show one column per kind, e.g. ``loss_fgl_dn_2`` -> ``loss_fgl``."""
        m = DFine._LOSS_PART.match(name)
        return m.group(1) if m else name

    # ---- recipe

    def recipe(self, epochs: int | None = None) -> dict[str, Any]:
        """detforge's small-data recipe of this size as TrainConfig keys (see dfine.recipe; the
        official one is sizes.official_recipe). ``epochs`` sizes the no-augmentation tail."""
        return small_data_recipe(self.size, epochs=epochs, from_pretrained=self.load_report is not None)
