"""`detforge train device=0,1,2,3` starts one process per GPU through torchrun itself
(PyTorch's own launcher, on a free local port), the way Ultralytics users expect."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

LOG = logging.getLogger("detforge")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(args: list[str], nproc: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "detforge", *args,
    ]


def maybe_launch_torchrun(args: list[str], devices: str) -> int | None:
    """Run under torchrun when several devices are named and we are not already a worker.

    Returns the exit code of the launched job, or None when this process should train itself."""
    if "RANK" in os.environ or "LOCAL_RANK" in os.environ:
        return None  # already launched by torchrun
    ids = [d.strip() for d in devices.split(",") if d.strip()]
    if len(ids) < 2:
        return None
    env = dict(os.environ)
    if all(d.isdigit() for d in ids):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    # inside the workers each process takes cuda:LOCAL_RANK of the visible devices
    passed = [a if not a.startswith("device=") else "device=cuda" for a in args]
    cmd = torchrun_command(passed, len(ids), free_port())
    LOG.info("launching %d processes: %s", len(ids), " ".join(cmd))
    return subprocess.call(cmd, env=env)
