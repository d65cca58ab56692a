"""Helpers shared by the export / predict / bench tests: a small detector whose scores are
spread out (a fresh FCOS scores every cell ~0.07, which makes rankings arbitrary), a
checkpoint in the detforge format, and a detection matcher that tolerates numeric noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detforge.engine.checkpoint import ModelRecord, inference_checkpoint, save_checkpoint
from detforge.models.zoo import available, build_model

NAMES = ["RBC", "WBC", "Platelets"]
DETECTORS = [name for name in ("fcos-n", "dfine-n") if name in available()]


def spread_model(name: str = "fcos-n", seed: int = 0) -> torch.nn.Module:
    """A seeded model with distinct scores: FCOS's prediction convs get larger random weights
    so cells disagree (D-FINE's random queries already do); D-FINE's norms and affine blocks
    get trained-looking values."""
    torch.manual_seed(seed)
    model = build_model(name, len(NAMES)).eval()
    head = getattr(model, "head", None)
    if name.startswith("fcos") and head is not None:
        with torch.no_grad():
            head.cls_pred.weight.normal_(0, 0.3)
            head.cls_pred.bias.fill_(-1.0)
            head.ctr_pred.weight.normal_(0, 0.3)
            head.reg_pred.weight.normal_(0, 0.1)
    if name.startswith("dfine"):
        # trained-looking norms and affine blocks (scales of both signs, shifts): the deploy
        # fold turns them into conv weights and clamps, which every backend must run alike
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for i, m in enumerate(model.modules()):
                if type(m).__name__ == "LearnableAffine":
                    m.scale.fill_(-0.6 if i % 5 == 0 else 1.0 + 0.3 * float(torch.rand(1, generator=g)))
                    m.bias.fill_(0.2 * float(torch.rand(1, generator=g)) - 0.1)
                elif isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def save_test_checkpoint(model: torch.nn.Module, path: Path, imgsz: int, resize_mode: str = "stretch",
                         conf: float = 0.3, class_conf: list[float] | None = None) -> Path:
    record = ModelRecord(
        model_name=model.model_name, num_classes=len(NAMES), names=list(NAMES), imgsz=imgsz,
        resize_mode=resize_mode, conf=conf, class_conf=class_conf,
        config={"imgsz": imgsz, "resize_mode": resize_mode, "conf": conf, "max_det": 300},
    )
    return save_checkpoint(inference_checkpoint(record, model.state_dict()), path)


def unmatched(ref, got, floor: float, box_tol: float = 1.0, score_tol: float = 1e-3) -> list[int]:
    """Rows of ``ref`` (boxes, scores, labels) scoring >= floor + score_tol that have no
    one-to-one partner in ``got`` with the same label, every coordinate within ``box_tol`` px
    and the score within ``score_tol``. Rows near ``floor`` may fall either side of it."""
    rb, rs, rl = (np.asarray(a) for a in ref)
    gb, gs, gl = (np.asarray(a) for a in got)
    used = np.zeros(len(gs), bool)
    candidates = np.where(gs >= floor - score_tol)[0]
    missing = []
    for i in np.where(rs >= floor + score_tol)[0]:
        ok = candidates[(~used[candidates]) & (gl[candidates] == rl[i]) & (np.abs(gs[candidates] - rs[i]) <= score_tol)]
        if len(ok):
            dist = np.abs(gb[ok] - rb[i]).max(axis=1)
            if dist.min() <= box_tol:
                used[ok[dist.argmin()]] = True
                continue
        missing.append(int(i))
    return missing


def assert_same_detections(ref, got, floor: float, box_tol: float = 1.0, score_tol: float = 1e-3, min_compared: int = 5) -> int:
    """Both directions of ``unmatched`` are empty; returns how many detections were compared."""
    compared = int((np.asarray(ref[1]) >= floor + score_tol).sum())
    assert compared >= min_compared, f"only {compared} detections above {floor}: the comparison would be empty"
    miss = unmatched(ref, got, floor, box_tol, score_tol)
    extra = unmatched(got, ref, floor, box_tol, score_tol)
    assert not miss and not extra, (
        f"{len(miss)} reference detections without a match, {len(extra)} extra (of {compared}); first missing: "
        f"{[(np.asarray(ref[0])[i].tolist(), float(ref[1][i]), int(ref[2][i])) for i in miss[:3]]}"
    )
    return compared
