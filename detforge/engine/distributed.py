"""torch.distributed set-up from the torchrun environment, and the few collectives the
trainer needs. Nothing here is home-made transport: it is torch.distributed (nccl on CUDA,
gloo on CPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

LOG = logging.getLogger("detforge")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What torchrun told this process (RANK / WORLD_SIZE / LOCAL_RANK); single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(info: DistInfo, use_cuda: bool, timeout_s: int = 1800) -> None:
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if use_cuda else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if use_cuda:
        # the CUDA device is LOCAL_RANK: the global rank breaks on multi-node jobs
        torch.cuda.set_device(info.local_rank)
        kwargs["device_id"] = torch.device("cuda", info.local_rank)
    dist.init_process_group(**kwargs)
    LOG.info("distributed: %s backend, world size %d", backend, info.world_size)


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_to_main(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank ``dst`` (None elsewhere); one rank: ``[obj]``."""
    if not is_initialized():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def reduce_loss_dict(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean of each loss term over the ranks that computed it, for logging.

    The key sets are compared first (one small all_gather): a rank whose batch had no boxes
    can drop a term, and reducing tensors of different lengths would hang or mix up terms.
    Each term is then averaged over the ranks that hold it."""
    items = {k: float(v.detach()) for k, v in losses.items()}
    if not is_initialized():
        return items
    keys = sorted(items)
    all_keys = all_gather_object(keys)
    if any(k != keys for k in all_keys):
        keys = sorted(set().union(*all_keys))
        LOG.debug("reduce_loss_dict: ranks report different loss terms %s", all_keys)
    device = next(iter(losses.values())).device if losses else torch.device("cpu")
    values = [items.get(k, 0.0) for k in keys] + [1.0 if k in items else 0.0 for k in keys]
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    sums, counts = t[: len(keys)], t[len(keys):]
    return dict(zip(keys, (sums / counts.clamp(min=1)).tolist()))


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank if it is True on any rank (stop together, never hang)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
