"""`detforge bench`: percentile maths against hand-worked numbers, argument checking, and
each action run end to end at toy sizes (figures are produced, never judged: speed targets
live in benchmarks/)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from detforge.bench.args import int_list, resolve
from detforge.bench.commands import bench_command
from detforge.bench.latency import summarise, time_calls
from detforge.bench.train_speed import fake_batches
from detforge.config import ConfigError


def test_summary_of_known_latencies():
    row = summarise(np.arange(1, 101, dtype=float), batch=4)  # 1..100 ms
    # numpy's linear interpolation: p = 1 + (100 - 1) * q
    assert row["avg_ms"] == pytest.approx(50.5) and row["p50_ms"] == pytest.approx(50.5)
    assert row["p90_ms"] == pytest.approx(90.1) and row["p95_ms"] == pytest.approx(95.05)
    assert row["p99_ms"] == pytest.approx(99.01)
    assert row["throughput"] == pytest.approx(4 * 1000 / 50.5) and row["iters"] == 100


def test_time_calls_skips_warmup():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, iters=5)
    assert len(calls) == 8 and times.shape == (5,) and (times >= 0).all()


def test_arguments_are_checked():
    assert int_list("1,2,4,8", "batch") == [1, 2, 4, 8] and int_list(3, "batch") == [3]
    with pytest.raises(ConfigError, match="expected integers like 1,2,4,8"):
        int_list("1,x", "batch")
    with pytest.raises(ConfigError, match="unknown key 'bacth'; did you mean 'batch'"):
        resolve("latency", {"bacth": 2}, {"batch": "1", "imgsz": 640})
    with pytest.raises(ConfigError, match="'imgsz': expected an integer"):
        resolve("latency", {"imgsz": "big"}, {"batch": "1", "imgsz": 640})
    with pytest.raises(ConfigError, match="unknown bench action 'speed'"):
        bench_command("speed", {})


def test_fake_batches_are_valid_targets():
    images, targets, _ = next(fake_batches(3, 64, 5, seed=0))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8 and len(targets) == 3
    for t in targets:
        b = t["boxes"]
        assert (b[:, 2:] > b[:, :2]).all() and (b >= 0).all() and (b <= 64).all() and (t["labels"] < 5).all()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_bench_latency_writes_table(tmp_path, backend):
    assert bench_command("latency", {"model": "fcos-n", "backend": backend, "batch": "1,2", "imgsz": 64,
                                     "threads": 1, "warmup": 1, "iters": 3, "out": str(tmp_path)}) == 0
    rows = list(csv.DictReader(open(tmp_path / "latency.csv")))
    assert [int(r["batch"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["p50_ms"]) <= float(r["p99_ms"]) and int(r["iters"]) == 3
        assert float(r["throughput"]) == pytest.approx(1000 * int(r["batch"]) / float(r["avg_ms"]))
    assert "| Batch size | Throughput (img/s) | Latency avg (ms) | Latency 50% (ms)" in (tmp_path / "latency.md").read_text()


def test_bench_latency_with_image_reading(tmp_path, synthetic_root):
    source = next(p for p in synthetic_root.rglob("*") if p.suffix in (".jpg", ".png")).parent
    assert bench_command("latency", {"model": "fcos-n", "backend": "torch", "batch": 2, "imgsz": 64, "threads": 1,
                                     "warmup": 1, "iters": 2, "include_io": True, "source": str(source),
                                     "out": str(tmp_path)}) == 0
    assert "read + preprocess + model" in (tmp_path / "latency.md").read_text()
    with pytest.raises(ValueError, match="include_io=true needs source="):
        bench_command("latency", {"model": "fcos-n", "imgsz": 64, "include_io": True, "out": str(tmp_path)})


def test_bench_train_fake_and_real(tmp_path, synthetic_root):
    assert bench_command("train", {"model": "fcos-n", "data": str(synthetic_root), "batch": 2, "imgsz": 64,
                                   "iters": 2, "warmup": 1, "workers": 0, "device": "cpu", "out": str(tmp_path)}) == 0
    rows = list(csv.DictReader(open(tmp_path / "train_speed.csv")))
    assert [r["data"] for r in rows] == ["real", "fake"]
    for r in rows:
        assert float(r["images_per_s"]) == pytest.approx(2 * 1000 / float(r["step_ms"]))
    with pytest.raises(ValueError, match="needs data=PATH"):
        bench_command("train", {"model": "fcos-n", "fake_data": False, "out": str(tmp_path)})


def test_bench_data_counts_images(tmp_path, synthetic_root):
    assert bench_command("data", {"data": str(synthetic_root), "workers": "0", "imgsz": 64, "batch": 4,
                                  "batches": 3, "warmup": 1, "out": str(tmp_path)}) == 0
    rows = list(csv.DictReader(open(tmp_path / "data_speed.csv")))
    assert len(rows) == 1 and int(rows[0]["images"]) == 12 and float(rows[0]["per_core"]) > 0


def test_bench_latency_with_fewer_decoder_layers(tmp_path):
    assert bench_command("latency", {"model": "dfine-n", "backend": "torch", "batch": "1", "imgsz": 64, "threads": 1,
                                     "warmup": 1, "iters": 2, "decoder_layers": 1, "out": str(tmp_path)}) == 0
    assert "decoder layers 1" in (tmp_path / "latency.md").read_text()
    with pytest.raises(ValueError, match="no decoder layers"):  # a CNN (the command line prints this line)
        bench_command("latency", {"model": "fcos-n", "batch": "1", "imgsz": 64, "decoder_layers": 1, "out": str(tmp_path)})


def test_bench_latency_on_a_fixed_size_export_uses_its_size_or_says_how(tmp_path):
    from detforge.export import export_model
    from detforge.models.zoo import build_model

    onnx = export_model(build_model("fcos-n", 3).eval(), ["a", "b", "c"], "onnx", tmp_path / "fixed", imgsz=64)
    with pytest.raises(ValueError, match=r"fixed at 64x64; pass imgsz=64 or export with dynamic=true"):
        bench_command("latency", {"model": str(onnx), "imgsz": 96, "batch": 1, "warmup": 1, "iters": 2,
                                  "out": str(tmp_path / "a")})
    assert bench_command("latency", {"model": str(onnx), "batch": 1, "warmup": 1, "iters": 2,
                                     "out": str(tmp_path / "b")}) == 0
    assert "64x64" in (tmp_path / "b" / "latency.md").read_text()
