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


# ---------------------------------------------------------------- the schema
def _record(**kw):
    from detforge.engine.checkpoint import ModelRecord

    return ModelRecord(model_name="fcos-n", num_classes=2, names=["a", "b"], imgsz=96, **kw)


def test_schema_inference_file_rebuilds_the_model_with_its_options(tmp_path):
    from detforge.engine.checkpoint import inference_checkpoint, load_detector_checkpoint, read_model_record
    from detforge.models.zoo import build_model

    model = build_model("fcos-n", 2, label_smoothing=0.1)
    path = save_checkpoint(inference_checkpoint(_record(model_options={"label_smoothing": 0.1}, class_conf=[0.3, 0.4]),
                                                model.state_dict()), tmp_path / "best.pt")
    ckpt = load_checkpoint(path)
    assert ckpt["schema"] == "detforge-checkpoint" and ckpt["version"] == 2 and ckpt["kind"] == "inference"
    assert not {"optimizer", "rng", "scaler", "train_weights"} & set(ckpt)
    rebuilt, _ = load_detector_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
    rec = read_model_record(path)
    assert (rec.names, rec.imgsz, rec.class_conf, rec.model_options) == (["a", "b"], 96, [0.3, 0.4],
                                                                         {"label_smoothing": 0.1})


def test_schema_refuses_newer_foreign_and_weights_only_for_resume(tmp_path):
    from detforge.engine.checkpoint import inference_checkpoint, read_detforge_checkpoint
    from detforge.errors import CheckpointError

    payload = inference_checkpoint(_record(), {"w": torch.ones(1)})
    path = save_checkpoint(payload, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="holds weights only .*resume needs a run's last.pt"):
        read_detforge_checkpoint(path, need="training")
    newer = save_checkpoint({**payload, "version": 99}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer detforge .*version 99.*reads up to 2"):
        read_detforge_checkpoint(newer)
    foreign = save_checkpoint({"state_dict": {"w": torch.ones(1)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a detforge checkpoint.*pretrained=PATH"):
        read_detforge_checkpoint(foreign)


def test_schema_training_file_needs_the_whole_resume_state():
    from detforge.engine.checkpoint import training_checkpoint

    with pytest.raises(ValueError, match="resume state lacks"):
        training_checkpoint(_record(), {}, {"optimizer": {}})


def test_first_format_files_are_converted(tmp_path):
    from detforge.engine.checkpoint import read_detforge_checkpoint

    raw, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    v1 = {"format": "detforge-checkpoint-v1", "model_name": "fcos-n", "num_classes": 2, "names": ["a", "b"],
          "model": raw, "ema": ema, "optimizer": {"state": {}}, "config": {"imgsz": 64}}
    ckpt = read_detforge_checkpoint(save_checkpoint(v1, tmp_path / "old.pt"), need="training")
    assert torch.equal(ckpt["model"]["w"], ema["w"]) and torch.equal(ckpt["train_weights"]["w"], raw["w"])
    assert ckpt["version"] == 2 and ckpt["model_options"] == {}


def test_pretrained_goes_to_the_family_reader_unless_it_is_a_detforge_checkpoint(tmp_path, monkeypatch):
    """pretrained=PATH: a foreign file (an official release) is read by the family's
    ModelSpec.load_weights; a detforge checkpoint by name-and-shape matching."""
    import dataclasses

    from detforge.engine.checkpoint import build_with_weights, inference_checkpoint
    from detforge.models import zoo
    from detforge.models.zoo import build_model

    calls = []
    spec = zoo.get_spec("fcos-n")
    monkeypatch.setitem(zoo._REGISTRY, "fcos-n", dataclasses.replace(
        spec, load_weights=lambda model, path: calls.append(path) or {"source": path}))
    source = build_model("fcos-n", 3)
    foreign = tmp_path / "official.pth"
    torch.save({"state_dict": source.state_dict()}, foreign)
    model = build_with_weights("fcos-n", 3, str(foreign))
    assert calls == [str(foreign)] and model.load_report == {"source": str(foreign)}

    ours = save_checkpoint(inference_checkpoint(_record(), source.state_dict()), tmp_path / "best.pt")
    model = build_with_weights("fcos-n", 3, str(ours))
    assert calls == [str(foreign)]  # not called again
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
