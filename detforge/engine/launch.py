"""`detforge train device=0,1,2,3` starts one process per GPU through torchrun itself
(PyTorch's own launcher, on a free local port), the way Ultralytics users expect.

For several nodes, or CPU processes, call torchrun directly:
``torchrun --nproc-per-node N -m detforge train ...`` (see docs/distributed.md)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import torch

from detforge.config import ConfigError

LOG = logging.getLogger("detforge")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(args: list[str], nproc: int, port: int) -> list[str]:
    """One node, ``nproc`` workers, rendezvous on 127.0.0.1:port, each running ``detforge <args>``."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "detforge", *args,
    ]


def parse_devices(devices: str) -> list[str]:
    return [d.strip() for d in str(devices).split(",") if d.strip()]


def visible_devices(ids: list[str], current: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for the workers. Indices count within an existing
    CUDA_VISIBLE_DEVICES, as torch.cuda does (device=0,1 under CUDA_VISIBLE_DEVICES=4,5,6 -> 4,5)."""
    if not current:
        return ",".join(ids)
    pool = parse_devices(current)
    bad = [i for i in ids if int(i) >= len(pool)]
    if bad:
        raise ConfigError(f"device={','.join(ids)}: index {bad[0]} is outside CUDA_VISIBLE_DEVICES={current}")
    return ",".join(pool[int(i)] for i in ids)


def maybe_launch_torchrun(args: list[str], devices: str) -> int | None:
    """Run under torchrun when several CUDA devices are named and we are not already a worker.

    Returns the exit code of the launched job, or None when this process should train itself."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return None  # already launched by torchrun: each worker takes cuda:LOCAL_RANK
    ids = parse_devices(devices)
    if len(ids) < 2:
        return None
    if not all(d.isdigit() for d in ids):
        raise ConfigError(
            f"device={devices}: a list must hold CUDA indices (e.g. device=0,1); for several CPU "
            "processes run `torchrun --nproc-per-node N -m detforge train device=cpu ...`"
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"device={devices}: a device is named twice")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if max(int(i) for i in ids) >= count:
        raise ConfigError(
            f"device={devices} names CUDA device {max(int(i) for i in ids)} but {count} are visible; "
            "use device=cpu, or torchrun --nproc-per-node N -m detforge train device=cpu for CPU processes"
        )
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = visible_devices(ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    passed = [a if not a.startswith("device=") else "device=cuda" for a in args]
    cmd = torchrun_command(passed, len(ids), free_port())
    LOG.info("launching %d processes: %s", len(ids), " ".join(cmd))
    return subprocess.call(cmd, env=env)
