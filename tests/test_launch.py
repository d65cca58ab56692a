"""`detforge train device=0,1` -> torchrun, and torchrun driving `python -m detforge train` across
two "nodes" on localhost through a c10d rendezvous (CPU, gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detforge.config import ConfigError
from detforge.engine import launch

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_command():
    cmd = launch.torchrun_command(["train", "epochs=2", "device=cuda"], 4, 29500)
    assert cmd == [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-addr", "127.0.0.1",
        "--master-port", "29500", "-m", "detforge", "train", "epochs=2", "device=cuda",
    ]


@pytest.fixture
def four_gpus(monkeypatch):
    """Pretend 4 CUDA devices are visible and capture the launched command instead of running it."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    for key in ("RANK", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    return calls


def test_device_list_launches_one_process_per_gpu(four_gpus):
    code = launch.maybe_launch_torchrun(["train", "epochs=3", "device=1,3"], "1,3")
    assert code == 0 and len(four_gpus) == 1
    cmd, env = four_gpus[0]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[-3:] == ["train", "epochs=3", "device=cuda"]  # each worker takes cuda:LOCAL_RANK
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert 0 < int(cmd[cmd.index("--master-port") + 1]) < 65536


def test_device_indices_count_within_visible_devices(four_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    launch.maybe_launch_torchrun(["train", "device=0,2"], "0,2")
    assert four_gpus[0][1]["CUDA_VISIBLE_DEVICES"] == "4,6"


def test_no_launch_for_one_device_or_inside_a_worker(four_gpus, monkeypatch):
    assert launch.maybe_launch_torchrun(["train", "device=0"], "0") is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert launch.maybe_launch_torchrun(["train", "device=0,1"], "0,1") is None
    assert four_gpus == []


@pytest.mark.parametrize("devices, message", [
    ("0,4", "names CUDA device 4 but 4 are visible"),
    ("0,0", "a device is named twice"),
    ("cpu,cpu", "a list must hold CUDA indices"),
])
def test_bad_device_lists_are_refused(four_gpus, devices, message):
    with pytest.raises(ConfigError, match=message):
        launch.maybe_launch_torchrun(["train", f"device={devices}"], devices)
    assert four_gpus == []


def test_cli_refuses_gpu_list_without_cuda(monkeypatch, capsys):
    from detforge.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert main(["train", "device=0,1", "epochs=1"]) == 2
    assert "device=0,1 names CUDA device 1 but 0 are visible" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_rendezvous_trains_and_saves_once(tmp_path):
    from detforge.data.synthetic import ensure_synthetic
    from detforge.engine.checkpoint import load_checkpoint

    root = ensure_synthetic(tmp_path / "data", n_train=8, n_val=4, size=96)
    project = tmp_path / "runs"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    node = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test",
        "--local-addr", "127.0.0.1",
        "-m", "detforge", "train", "model=fcos-n", f"data={root}", "epochs=1", "imgsz=64", "batch=4",
        "workers=0", "device=cpu", f"project={project}", "name=job", "plots=false", "amp=false",
        "mosaic=0", "logger=none", "warmup_epochs=0",
    ]
    procs = [subprocess.Popen(node, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    # one run folder (rank 1 made no job2), one last.pt written by rank 0, no stray temp files
    assert [d.name for d in project.iterdir()] == ["job"]
    weights = project / "job" / "weights"
    assert sorted(f.name for f in weights.iterdir()) == ["best.pt", "last.pt"]
    ckpt = load_checkpoint(weights / "last.pt")
    assert ckpt["epoch"] == 0 and len(ckpt["history"]) == 1
    rows = (project / "job" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + epoch 1
    # both agents joined one world of 2 (rank 0 logs it); global batch 4 on 8 images -> 2 steps
    assert sum("gloo backend, world size 2" in out for out in outputs) == 1
    assert ckpt["iteration"] == 2
