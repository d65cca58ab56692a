"""`detforge compare`: the ranking functions on hand-worked cases, the resume decisions on
hand-made run folders, and one real comparison of two tiny models on the built-in set (files,
front, recommendation, and that a finished model is not trained again while an interrupted
one resumes from its last.pt)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from log_helpers import detforge_log

from detforge.compare.plan import CompareSettings, dataset_tags, run_state
from detforge.compare.ranking import mean_ranks, pareto_front, recommend, recommendation_text
from detforge.config import ConfigError, TrainConfig
from detforge.utils.lists import split_list


# ------------------------------------------------------------------ ranking (pure)
def test_pareto_front_hand_case():
    points = [
        (10.0, 0.50),  # A: on the front
        (20.0, 0.60),  # B: on the front
        (15.0, 0.45),  # C: A is faster and more accurate
        (30.0, 0.60),  # D: as accurate as B but slower
        (5.0, 0.30),   # E: the fastest
        (20.0, 0.60),  # F: equal to B: neither dominates the other
        (10.0, 0.49),  # G: as fast as A, less accurate
    ]
    assert pareto_front(points) == [True, True, False, False, True, True, False]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.1)]) == [True]


ROWS = [
    {"model": "big", "map50_95": 0.600, "p50_ms": 40.0},
    {"model": "mid", "map50_95": 0.592, "p50_ms": 12.0},  # within one point of big, 3.3x faster
    {"model": "small", "map50_95": 0.500, "p50_ms": 5.0},
    {"model": "slow", "map50_95": 0.550, "p50_ms": 90.0},
]


def test_recommend_fastest_within_one_point_and_best_under_budget():
    rec = recommend(ROWS, max_latency_ms=10)
    assert rec["best"] == "big"
    assert rec["fastest_within_tolerance"] == "mid"
    assert rec["within_budget"] == "small"
    text = recommendation_text(ROWS, rec)
    assert text[0] == "Most accurate: big (mAP50-95 0.600, p50 40.0 ms)."
    assert text[1].startswith("Fastest within 1 mAP50-95 point of the best: mid (mAP50-95 0.592, p50 12.0 ms, 3.3x faster")
    assert text[2] == "Most accurate under 10 ms: small (mAP50-95 0.500, p50 5.0 ms)."

    assert recommend(ROWS, max_latency_ms=50)["within_budget"] == "big"
    assert recommend(ROWS, tolerance=0.005)["fastest_within_tolerance"] == "big"  # 0.008 behind is too far
    none = recommend(ROWS, max_latency_ms=1)
    assert none["within_budget"] is None
    assert recommendation_text(ROWS, none)[-1] == "No model meets p50 <= 1 ms; the fastest is small at 5.0 ms."


def test_mean_rank_over_datasets_shares_tied_places():
    tables = {
        "a": [{"model": "x", "map50_95": 0.5}, {"model": "y", "map50_95": 0.4}, {"model": "z", "map50_95": 0.4}],
        "b": [{"model": "x", "map50_95": 0.1}, {"model": "y", "map50_95": 0.3}, {"model": "z", "map50_95": 0.2}],
    }
    ranks = mean_ranks(tables)
    assert ranks["x"] == {"mean_rank": 2.0, "ranks": {"a": 1.0, "b": 3.0}}
    assert ranks["y"] == {"mean_rank": 1.75, "ranks": {"a": 2.5, "b": 1.0}}
    assert ranks["z"] == {"mean_rank": 2.25, "ranks": {"a": 2.5, "b": 2.0}}
    assert list(ranks) == ["y", "x", "z"]


# ------------------------------------------------------------------ settings and resume decisions
def test_lists_and_dataset_tags():
    assert split_list("dfine-n, fcos-n,,dfine-n") == ["dfine-n", "fcos-n"]
    assert split_list(["a", "b"]) == ["a", "b"] and split_list(None) == []
    assert dataset_tags(["/d/bccd", "/e/bccd", None, "/f/set/data.yaml"]) == ["bccd", "bccd-2", "synthetic", "set"]


def test_settings_refuse_what_cannot_work(tmp_path):
    def settings(**kw):
        return CompareSettings.from_config(TrainConfig(**kw), set(kw))

    with pytest.raises(ConfigError, match="compare needs models="):
        settings()
    with pytest.raises(ValueError, match="unknown model 'fcos-q'"):
        settings(models="fcos-n,fcos-q")
    with pytest.raises(ConfigError, match="no weights/best.pt"):
        settings(runs=str(tmp_path))
    with pytest.raises(ConfigError, match="latency batch"):
        settings(models="fcos-n", batch=0.5)
    s = settings(models="fcos-n,dfine-n", data="a,b", train_batch=4, workers=0, project=str(tmp_path))
    assert s.models == ["fcos-n", "dfine-n"] and s.datasets == ["a", "b"] and s.latency_batch == 1
    assert s.train_args == {"workers": 0, "batch": 4} and s.out == tmp_path / "compare"


def _fake_run(folder: Path, epochs_done: int, finished: bool, **config) -> None:
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "last.pt").write_bytes(b"x")
    (folder / "config.yaml").write_text("".join(f"{k}: {v}  # key=value\n" for k, v in config.items()))
    rows = "".join(f"{e},0.5,1.0\n" for e in range(1, epochs_done + 1))
    (folder / "metrics.csv").write_text("epoch,loss,time\n" + rows)
    if finished:
        (folder / "weights" / "best.pt").write_bytes(b"x")
        (folder / "metrics.json").write_text("{}")


def test_run_state_trains_resumes_skips_or_refuses(tmp_path):
    assert run_state(tmp_path / "none", "fcos-n", None, 128, 5).action == "train"

    _fake_run(tmp_path / "cut", 2, finished=False, model="fcos-n", imgsz=128, epochs=5)
    cut = run_state(tmp_path / "cut", "fcos-n", None, 128, 5)
    assert (cut.action, cut.last, cut.epochs_done) == ("resume", tmp_path / "cut/weights/last.pt", 2)

    _fake_run(tmp_path / "done", 5, finished=True, model="fcos-n", imgsz=128, epochs=5)
    assert run_state(tmp_path / "done", "fcos-n", None, 128, 5).action == "done"
    assert run_state(tmp_path / "done", "fcos-n", None, 128, 8).action == "resume"  # asked for more epochs

    with pytest.raises(ConfigError, match="imgsz=128, this comparison asks for imgsz=256"):
        run_state(tmp_path / "done", "fcos-n", None, 256, 5)
    with pytest.raises(ConfigError, match="model=fcos-n, this comparison asks for model=dfine-n"):
        run_state(tmp_path / "done", "dfine-n", None, 128, 5)


def test_latency_runs_where_the_runtime_can():
    from detforge.compare.measure import latency_device

    assert latency_device("torch", "0") == "0"
    assert latency_device("onnxruntime", "cpu") == "cpu"
    assert latency_device("onnxruntime", "0") == "auto"  # CUDA provider if this build has one, else CPU
    assert latency_device("openvino", "cuda") == "auto"


def test_cli_refuses_a_comparison_without_models(capsys):
    from detforge.cli import main

    assert main(["compare", "epochs=1"]) == 2
    assert "compare needs models=" in capsys.readouterr().err


# ------------------------------------------------------------------ a real comparison
def _compare(root: Path, project: Path, models: str) -> int:
    from detforge.compare import compare_command

    values = {"data": str(root), "models": models, "epochs": 1, "imgsz": 128, "train_batch": 8, "workers": 0,
              "device": "cpu", "latency_iters": 3, "threads": 1, "project": str(project), "name": "cmp",
              "plots": False, "seed": 1}
    return compare_command(TrainConfig(**values), set(values))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_comparison_files_front_and_resume(synthetic_root, tmp_path):
    out, tag = tmp_path / "cmp", synthetic_root.name  # a dataset's folder is named after it
    # first call: one model, which finishes
    assert _compare(synthetic_root, tmp_path, "fcos-n") == 0
    fcos = out / tag / "fcos-n"
    stamp = {p: p.stat().st_mtime_ns for p in (fcos / "weights/last.pt", fcos / "weights/best.pt", fcos / "metrics.csv")}
    assert len(_csv(fcos / "metrics.csv")) == 1

    # second call adds a model: fcos-n is not trained again, dfine-n is
    with detforge_log() as log:
        assert _compare(synthetic_root, tmp_path, "fcos-n,dfine-n") == 0
    assert any(line.startswith("compare: fcos-n finished earlier (1 epochs") for line in log)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    dfine = out / tag / "dfine-n"
    assert len(_csv(dfine / "metrics.csv")) == 1 and (dfine / "weights/best.pt").is_file()

    rows = _csv(out / "compare.csv")
    assert [r["model"] for r in rows] == ["fcos-n", "dfine-n"]
    for r in rows:
        assert r["dataset"] == tag and r["split"] == "val" and r["runtime"] == "onnxruntime"
        assert 0 <= float(r["map50_95"]) <= float(r["map50"]) <= 1
        assert float(r["p50_ms"]) > 0 and float(r["params_m"]) > 0 and r["epochs"] == "1"
        assert Path(r["model_file"]).suffix == ".onnx" and Path(r["model_file"]).is_file()
    expected_front = pareto_front([(float(r["p50_ms"]), float(r["map50_95"])) for r in rows])
    assert [r["pareto"] == "True" for r in rows] == expected_front
    assert any(expected_front)

    result = json.loads((out / "compare.json").read_text())
    d = result["datasets"][tag]
    assert d["split"] == "val" and len(d["rows"]) == 2
    assert d["recommendation"]["best"] == max(rows, key=lambda r: float(r["map50_95"]))["model"]
    assert d["recommendation"]["fastest_within_tolerance"] in {"fcos-n", "dfine-n"}
    assert d["text"][0].startswith("Most accurate: ")
    assert result["settings"]["latency_iters"] == 3 and result["failed"] == []
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the common evaluation equals what `val` writes for that checkpoint on that split
    val = json.loads((out / tag / "val" / "dfine-n" / "metrics.json").read_text())
    assert val["map50_95"] == pytest.approx(float(rows[1]["map50_95"]), abs=1e-5)

    # an interrupted run (no metrics.json after its last.pt) resumes from last.pt; the finished one stays
    (dfine / "metrics.json").unlink()
    with detforge_log() as log:
        assert _compare(synthetic_root, tmp_path, "fcos-n,dfine-n") == 0
    assert f"compare: dfine-n resumes from {dfine / 'weights' / 'last.pt'} (epoch 1 of 1)" in log
    assert (dfine / "metrics.json").is_file() and len(_csv(dfine / "metrics.csv")) == 1
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp

    # runs= ranks finished run folders as they are, at their own image size, without training
    from detforge.compare import compare_command

    values = {"data": str(synthetic_root), "runs": str(fcos), "latency_iters": 2, "threads": 1, "workers": 0,
              "device": "cpu", "project": str(tmp_path), "name": "taken"}
    assert compare_command(TrainConfig(**values), set(values)) == 0
    taken = _csv(tmp_path / "taken" / "compare.csv")
    assert [(r["model"], r["imgsz"], r["run_dir"]) for r in taken] == [("fcos-n", "128", str(fcos))]
    # compare.csv holds 6 decimals, and scoring at another batch size reorders near-ties of a
    # one-epoch model (0.000873 against 0.000874 seen): equal to 1e-5
    assert float(taken[0]["map50_95"]) == pytest.approx(float(rows[0]["map50_95"]), abs=1e-5)
    assert not (tmp_path / "taken" / tag / "fcos-n").exists()
