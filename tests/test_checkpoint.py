import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from detforge.engine.checkpoint import (
    find_state_dict,
    load_checkpoint,
    load_matching,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from detforge.errors import CheckpointError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_round_trip_and_rng(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    path = save_checkpoint({"rng": state, "x": torch.arange(3)}, tmp_path / "last.pt")
    ck = load_checkpoint(path)
    set_rng_state(ck["rng"])
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    assert torch.equal(ck["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp files left


def test_tampered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(garbage)


def test_kill_during_save_leaves_previous_file(tmp_path):
    """SIGKILL a process in the middle of writing: the old last.pt must still load."""
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(4)}, path)
    script = textwrap.dedent(f"""
        import os, torch, signal
        import detforge.engine.checkpoint as c
        real = torch.save
        def slow(obj, f):
            f.write(b"partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        c.torch.save = slow
        c.save_checkpoint({{"epoch": 2}}, r"{path}")
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode != 0
    assert load_checkpoint(path)["epoch"] == 1


def test_load_matching_reports_shape_mismatch():
    src = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 80))
    dst = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    report = load_matching(dst, {"module." + k: v for k, v in src.state_dict().items()})
    assert report["loaded"] == 2 and len(report["shape_mismatch"]) == 2
    assert torch.equal(dst[0].weight, src[0].weight)


def test_find_state_dict_layouts():
    sd = {"a": torch.zeros(1)}
    assert find_state_dict({"ema": {"module": sd}, "model": {"b": torch.ones(1)}}) is sd
    assert find_state_dict({"model": sd}) is sd
    assert find_state_dict(sd) is sd
    with pytest.raises(CheckpointError):
        find_state_dict({"epoch": 3})
