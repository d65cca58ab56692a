"""Process-level helpers: logging, device choice, seeding, run folders."""

from __future__ import annotations

import logging
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

LOG = logging.getLogger("detforge")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record is emitted, so a redirect made after
    set-up (a notebook, a test's capture, contextlib.redirect_stdout) receives the lines."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool = True, rank: int = 0) -> None:
    if any(isinstance(h, _StdoutHandler) for h in LOG.handlers):
        LOG.setLevel(logging.INFO if verbose and rank == 0 else logging.WARNING)
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(handler)
    LOG.propagate = False
    LOG.setLevel(logging.INFO if verbose and rank == 0 else logging.WARNING)


def remove_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        LOG.removeHandler(handler)
        handler.close()


def add_file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    return handler


def select_device(device: str | None, local_rank: int | None = None) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu'; 'cuda'; '0' or '0,1' (CUDA indices).

    Under torchrun the process uses LOCAL_RANK (not the global rank: multi-node safe)."""
    d = (device or "auto").strip().lower()
    if d in ("auto", ""):
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return torch.device("cpu")
    if d == "mps":
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device} asks for CUDA, but torch.cuda.is_available() is False; use device=cpu")
    if local_rank is not None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if d == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    first = int(d.split(",")[0])
    if first >= torch.cuda.device_count():
        raise ValueError(f"device={device}: only {torch.cuda.device_count()} CUDA devices visible")
    torch.cuda.set_device(first)
    return torch.device("cuda", first)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def increment_path(base: Path, exist_ok: bool = False) -> Path:
    """runs/train -> runs/train2 -> runs/train3 ... unless exist_ok."""
    base = Path(base)
    if exist_ok or not base.exists():
        return base
    stem = re.sub(r"\d+$", "", base.name) or base.name
    n = 2
    while (base.parent / f"{stem}{n}").exists():
        n += 1
    return base.parent / f"{stem}{n}"


def memory_used() -> str:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return f"{torch.cuda.memory_reserved() / 2**30:.1f}G"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return f"{int(line.split()[1]) / 2**20:.1f}G"
    except OSError:
        pass
    return "-"
