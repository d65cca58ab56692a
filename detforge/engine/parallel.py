"""Data-parallel training modes, all from torch.distributed:

- ``ddp``: DistributedDataParallel (``find_unused_parameters`` only when a model sets it);
- ``zero1``: DDP for the gradients plus ``ZeroRedundancyOptimizer``, which shards the optimizer
  state across ranks (consolidated on rank 0 before a checkpoint is written);
- ``fsdp``: FSDP2 ``fully_shard`` on every direct child and the root. Parameters, gradients
  and optimizer state are sharded; ``reshard_after_forward=False`` keeps the gathered
  parameters from forward to backward (ZeRO-2-like: more memory, one all-gather less).
  Checkpoints hold the gathered weights (for val / predict / export) and the sharded
  model + optimizer state in a torch.distributed.checkpoint folder (for resume).

Every mode needs a gradient for every trainable parameter on every rank at each synchronised
step: DDP all-reduces fixed buckets and waits for each parameter's gradient, FSDP2
reduce-scatters the gradients that exist (a rank with fewer sends fewer bytes). A model whose
batch can leave a parameter out of the loss keeps it in with a zero-weighted term (see
``DetectionModel.find_unused_parameters``); ``gradient_sync`` names such a parameter instead of
letting the other ranks wait, and a collective that still waits longer than ``dist_timeout``
fails with the rank and the operation (``distributed.collective``).

The trainer touches the mode only through the functions here.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from detforge.engine import distributed as dist_utils
from detforge.engine.distributed import DistributedError, collective
from detforge.engine.ema import unwrap_model

LOG = logging.getLogger("detforge")
PARALLEL_MODES = ("ddp", "zero1", "fsdp")


def convert_sync_bn(model: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """BatchNorm -> SyncBatchNorm on CUDA. SyncBatchNorm cannot train on CPU, so there it warns
    and keeps BatchNorm. The converted layers reuse the original parameters, so an optimizer
    built before the conversion still holds the right tensors."""
    if not enabled:
        return model
    if device.type != "cuda":
        LOG.warning("sync_bn=true needs CUDA (SyncBatchNorm cannot train on CPU): keeping BatchNorm")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: nn.Module, device: torch.device, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 in place: each direct child with parameters becomes one communication unit, the root
    takes what is left (its own parameters and buffers)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for child in model.children():
        if any(p.requires_grad for p in child.parameters()):
            fully_shard(child, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def wrap_model(model: nn.Module, cfg, device: torch.device) -> nn.Module:
    """The module to run forward/backward through under ``cfg.parallel``. For ``fsdp`` that is
    ``model`` itself, sharded in place: build the optimizer after this call."""
    mode = cfg.parallel
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel={mode!r}: allowed values are {', '.join(PARALLEL_MODES)}")
    model = convert_sync_bn(model, device, cfg.sync_bn)
    find_unused = bool(getattr(unwrap_model(model), "find_unused_parameters", False))
    if mode == "fsdp" and find_unused:
        raise ValueError(f"parallel=fsdp: {type(unwrap_model(model)).__name__} leaves some parameters out of the loss "
                         "on some batches (find_unused_parameters), and FSDP cannot reduce gradients that only some "
                         "ranks have; use parallel=ddp or zero1")
    if mode == "fsdp":
        reshard = bool(getattr(cfg, "fsdp_reshard", True))
        LOG.info("parallel=fsdp: FSDP2 fully_shard, reshard_after_forward=%s", reshard)
        return shard_model(model, device, reshard_after_forward=reshard)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused)


def _constructor_kwargs(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's defaults that its constructor accepts (what ZeRO needs to rebuild it per shard)."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return {k: v for k, v in optimizer.defaults.items() if k in accepted and k != "params"}


def shard_optimizer(optimizer: torch.optim.Optimizer, mode: str) -> torch.optim.Optimizer:
    """``zero1``: the same optimizer class, groups and hyperparameters inside a
    ZeroRedundancyOptimizer (each rank keeps the state of its own parameter shard). Other modes
    return ``optimizer`` unchanged (FSDP2 shards the state through its DTensor parameters)."""
    if mode != "zero1":
        return optimizer
    from torch.distributed.optim import ZeroRedundancyOptimizer

    kwargs = _constructor_kwargs(optimizer)
    if kwargs.get("max_grad_norm") is not None:
        # Lamb's internal clipping would clip each shard by its own norm: clip outside (clip_grad)
        LOG.warning("parallel=zero1: switching off %s's internal gradient clipping; use clip_grad", type(optimizer).__name__)
        kwargs["max_grad_norm"] = None
    groups = [{k: v for k, v in g.items()} for g in optimizer.param_groups]
    return ZeroRedundancyOptimizer(groups, optimizer_class=type(optimizer), **kwargs)


def rebind_optimizer(optimizer: torch.optim.Optimizer, old_names: dict[int, str], model: nn.Module) -> torch.optim.Optimizer:
    """A fresh optimizer of the same class, groups and hyperparameters over ``model``'s current
    parameters, matched by name (``old_names``: id(old parameter) -> name). FSDP2 replaces every
    parameter with a sharded one, so an optimizer built before sharding must be rebuilt."""
    if optimizer.state:
        raise RuntimeError("rebind_optimizer: the optimizer already has state; shard the model before training")
    current = dict(model.named_parameters())
    groups = []
    for g in optimizer.param_groups:
        try:
            params = [current[old_names[id(p)]] for p in g["params"]]
        except KeyError as e:
            raise RuntimeError(f"rebind_optimizer: parameter {e} of the optimizer is not in the sharded model") from None
        groups.append({**g, "params": params})
    return type(optimizer)(groups, **_constructor_kwargs(optimizer))


def wrap(model: nn.Module, optimizer: torch.optim.Optimizer, cfg, device: torch.device
         ) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Wrap ``model`` for ``cfg.parallel`` and return the optimizer to step: the given one (ddp),
    a ZeroRedundancyOptimizer around it (zero1) or one rebuilt over the sharded parameters (fsdp)."""
    old_names = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    wrapped = wrap_model(model, cfg, device)
    if cfg.parallel == "fsdp":
        return wrapped, rebind_optimizer(optimizer, old_names, wrapped)
    return wrapped, shard_optimizer(optimizer, cfg.parallel)


def ema_source(model: nn.Module) -> nn.Module:
    """What ``ModelEMA.update`` should read: the model, or its gathered view under FSDP."""
    return GatheredView(model) if is_fsdp(model) else model


_STEP_HINT = ("a parameter that got no gradient on one rank (every parameter must take part in every rank's "
              "loss) is the usual cause")


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run one forward/backward. ``enabled=False`` skips the gradient all-reduce /
    reduce-scatter on accumulation micro-steps that are not the last (DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync``). In a distributed run a timed-out or broken collective inside
    becomes a DistributedError naming the rank, and after a synchronised DDP backward a
    parameter without gradient is named at once (the other ranks would wait for it)."""
    if not dist_utils.is_initialized():
        with _gradient_sync(model, enabled):
            yield
        return
    with collective("forward/backward (gradient sync)", _STEP_HINT), _gradient_sync(model, enabled):
        yield
    if enabled and isinstance(model, DDP) and not model.find_unused_parameters:
        check_all_gradients(model.module)


def check_all_gradients(model: nn.Module) -> None:
    """Raise if a backward gave gradients to some trainable parameters but not to others.

    Under DDP that rank leaves backward without all-reducing the bucket that holds the missing
    parameter while the other ranks wait for it: the run would hang until ``dist_timeout``.
    Nothing is raised when no parameter has a gradient (no backward ran, e.g. a skipped step)."""
    missing, present = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if p.grad is None:
                missing.append(name)
            else:
                present += 1
    if missing and present:
        rank = f"rank {torch.distributed.get_rank()} of {torch.distributed.get_world_size()}"
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DistributedError(
            f"{rank}: {len(missing)} of {len(missing) + present} trainable parameters got no gradient in this "
            f"step ({shown}), so the other ranks wait for them in DDP's all-reduce: {type(model).__name__} must "
            "keep every parameter in the loss on every batch (a zero-weighted term) or set "
            "find_unused_parameters = True")


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """The mode's own switch for skipping the gradient reduction (nothing when ``enabled``)."""
    if enabled:
        yield
    elif is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


@collective("model_state_dict (gathering sharded weights)")
def model_state_dict(model: nn.Module, all_ranks: bool = True) -> dict[str, torch.Tensor]:
    """Plain (unsharded) weights. Under FSDP this gathers: call it on every rank; with
    ``all_ranks=False`` only rank 0 receives the tensors (on CPU), the others an empty dict."""
    if not is_fsdp(model):
        return unwrap_model(model).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sync_buffers(model)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks))


@torch.no_grad()
def sync_buffers(model: nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s buffers (BatchNorm statistics), in place: one broadcast
    per dtype. DDP does this before every forward; FSDP2 leaves each rank its own, so without
    it each rank would evaluate with its own statistics, and a distributed checkpoint would hold
    whichever rank's copy it picked for each buffer (a resumed run then differs from one never
    interrupted). Called wherever sharded weights are read: evaluation, EMA, checkpoints."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in model.buffers():
        by_dtype.setdefault(b.dtype, []).append(b)
    for group in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in group])
        torch.distributed.broadcast(flat, src)
        offset = 0
        for b in group:
            b.copy_(flat[offset: offset + b.numel()].view_as(b))
            offset += b.numel()


@collective("load_model_state_dict")
def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load plain weights into a plain, DDP-wrapped or FSDP-sharded model (every rank calls it)."""
    if not is_fsdp(model):
        unwrap_model(model).load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


@collective("optimizer_state_dict (consolidating optimizer shards)")
def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """The optimizer state for a single-file checkpoint, on rank 0. Every rank must call it:
    ZeRO consolidates the shards on rank 0 (the other ranks get None). Under FSDP the state
    stays sharded in the distributed checkpoint (``save_sharded``) and this returns None."""
    if is_fsdp(model):
        return None
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
        return optimizer.state_dict() if torch.distributed.get_rank() == 0 else None
    return optimizer.state_dict()


@collective("save_sharded (distributed checkpoint)")
def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """FSDP: each rank writes its shard of model + optimizer state (torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    sync_buffers(model)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(folder))


@collective("load_sharded (distributed checkpoint)")
def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """Inverse of ``save_sharded`` (the world size may differ: DCP reshards on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (Path(folder) / ".metadata").is_file():
        raise FileNotFoundError(f"{folder}: no distributed checkpoint here (.metadata missing) to resume parallel=fsdp from")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


class GatheredView(nn.Module):
    """Presents a sharded model's gathered weights through ``state_dict()``, for code that reads
    a plain module (the EMA update). Every rank must call ``state_dict()`` together."""

    def __init__(self, sharded: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_sharded", sharded)  # not a registered submodule

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return model_state_dict(self._sharded, all_ranks=True)


def plain_copy(model: nn.Module) -> nn.Module:
    """An unsharded copy to evaluate with (FSDP modules run collectives in forward, which
    would hang on uneven validation shards). Take it before ``shard_model``."""
    return copy.deepcopy(unwrap_model(model))
