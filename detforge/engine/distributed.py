"""torch.distributed set-up from the torchrun environment, and the few collectives the
trainer needs. Nothing here is home-made transport: it is torch.distributed (nccl on CUDA,
gloo on CPU).

Every collective waits at most ``dist_timeout`` seconds for the other ranks. A rank that gets
stuck, crashes or takes another code path then fails the run instead of leaving the others
waiting forever: on gloo the waiting ranks see a RuntimeError, which the wrappers here turn into
a one-line :class:`DistributedError` naming the rank, the operation and its caller. On NCCL,
torch's watchdog enforces the same timeout and reports the rank and the operation itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from detforge.errors import DetforgeError

LOG = logging.getLogger("detforge")
# torch's own default for gloo; a hang fails after this instead of never (dist_timeout= sets it)
DEFAULT_TIMEOUT_S = 1800.0
# what gloo / NCCL / the c10d store say when a peer never answers or went away
_COMM_FAILURE = re.compile(
    r"timed out|timeout|connection (?:reset|closed|refused)|closed by peer|broken pipe|read error|"
    r"write error|NCCL|gloo|socket", re.IGNORECASE)
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*")  # "[.../unbound_buffer.cc:78] "
_HERE = {str(Path(__file__).resolve().parent / n) for n in ("distributed.py", "parallel.py")}
_F = TypeVar("_F", bound=Callable[..., Any])


class DistributedError(DetforgeError, RuntimeError):
    """A collective failed or timed out; the message names the rank, the operation and where
    it was called from, in one line."""


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


_timeout_s = DEFAULT_TIMEOUT_S  # what the process group was created with, for messages


def init_process_group(info: DistInfo, use_cuda: bool, timeout: float | timedelta | None = None) -> None:
    """Join the torchrun job. ``timeout`` (seconds, or a timedelta; default DEFAULT_TIMEOUT_S)
    bounds every collective: a rank that waits longer for the others fails."""
    global _timeout_s
    if not info.enabled or dist.is_initialized():
        return
    seconds = DEFAULT_TIMEOUT_S if timeout is None else (
        timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout))
    if not seconds > 0:
        raise ValueError(f"dist_timeout={timeout}: must be a positive number of seconds")
    backend = "nccl" if use_cuda else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=seconds)}
    if use_cuda:
        # the CUDA device is LOCAL_RANK: the global rank breaks on multi-node jobs
        torch.cuda.set_device(info.local_rank)
        kwargs["device_id"] = torch.device("cuda", info.local_rank)
    dist.init_process_group(**kwargs)
    _timeout_s = seconds
    LOG.info("distributed: %s backend, world size %d, collectives time out after %g s", backend,
             info.world_size, seconds)


def collective_timeout() -> float:
    """Seconds a collective of this process group waits (``dist_timeout``)."""
    return _timeout_s


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


# ---------------------------------------------------------------- failures named
_ops: list[str] = []  # the collectives being run, outermost first (e.g. reduce_loss_dict > all_gather_object)


def is_comm_failure(error: BaseException) -> bool:
    """True for what a collective raises when a peer is stuck or gone (not for a bug in the
    code run between collectives, e.g. a shape error in forward)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return isinstance(error, RuntimeError) and bool(_COMM_FAILURE.search(str(error)))


def _caller() -> str:
    """file:line function of the innermost frame outside this module and parallel.py."""
    for frame in reversed(traceback.extract_stack()):
        if str(Path(frame.filename).resolve()) not in _HERE and "contextlib" not in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "?"


def failure_message(op: str, error: BaseException, hint: str = "") -> str:
    rank = f"rank {dist.get_rank()} of {dist.get_world_size()}" if is_initialized() else "this rank"
    reason = _SOURCE_PREFIX.sub("", str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    if _TIMED_OUT.search(str(error)):
        what = (f"timed out after {_timeout_s:g} s (dist_timeout): another rank never joined it; it is "
                f"stuck, crashed or took another code path (see that rank's own error)")
        what += f"; {hint}" if hint else ""
    else:  # the rank that left has its own error: that one says what happened
        what = f"failed: another rank left the job or broke the connection ({reason[:160]})"
    return f"{rank}: {op} at {_caller()} {what}"


@contextlib.contextmanager
def collective(op: str, hint: str = "") -> Iterator[None]:
    """Run collectives under the name ``op``: a timeout or a lost peer inside becomes a
    DistributedError naming this rank and ``op`` (plus ``hint`` on a timeout: the usual cause);
    other errors pass through unchanged."""
    _ops.append(op)
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as e:
        if not is_initialized() or not is_comm_failure(e):
            raise
        raise DistributedError(failure_message(" > ".join(_ops), e, hint)) from e
    finally:
        _ops.pop()


def _named(op: str) -> Callable[[_F], _F]:
    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with collective(op):
                return fn(*args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap


# ---------------------------------------------------------------- the collectives
@_named("barrier")
def barrier() -> None:
    """Wait for every rank. Reached while an error propagates on this rank (a ``finally``),
    it does not wait: the other ranks may never arrive, and waiting ``dist_timeout`` would only
    bury this rank's own error under a timeout. Leaving lets the others fail at once."""
    if not is_initialized():
        return
    if sys.exc_info()[1] is not None:
        LOG.debug("barrier skipped: an error is propagating on rank %d", dist.get_rank())
        return
    dist.barrier()


@_named("all_gather_object")
def all_gather_object(obj: Any) -> list[Any]:
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@_named("broadcast_object")
def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@_named("gather_to_main")
def gather_to_main(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` as a list on rank ``dst`` (None elsewhere); one rank: ``[obj]``."""
    if not is_initialized():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


@_named("reduce_loss_dict")
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


@_named("any_rank")
def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank if it is True on any rank (stop together, never hang)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model
