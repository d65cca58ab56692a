"""Wrap a model for data-parallel training: DDP (default), ZeRO-1 or FSDP2."""

from __future__ import annotations

import logging

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

LOG = logging.getLogger("detforge")


def convert_sync_bn(model: torch.nn.Module, device: torch.device, enabled: bool) -> torch.nn.Module:
    if not enabled:
        return model
    if device.type != "cuda":
        LOG.warning("sync_bn=true needs CUDA (SyncBatchNorm cannot train on CPU): keeping BatchNorm")
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model: torch.nn.Module, cfg, device: torch.device) -> torch.nn.Module:
    model = convert_sync_bn(model, device, cfg.sync_bn)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=getattr(model, "find_unused_parameters", False))
