"""ONNX export and onnxruntime inference are core dependencies; OpenVINO and TensorRT are
optional runtimes whose absence gives a one-line install hint from the Python API and the CLI
alike, before any work is done."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from deploy_helpers import NAMES, save_test_checkpoint, spread_model

from detforge.cli import main
from detforge.export import export_model
from detforge.infer.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]


def _requirement_names(items: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", item, maxsplit=1)[0].lower() for item in items}


def test_onnx_and_onnxruntime_are_core_openvino_is_an_extra():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    assert {"onnx", "onnxruntime"} <= core and "openvino" not in core
    assert "openvino" in _requirement_names(project["optional-dependencies"]["export"])


@pytest.fixture
def no_openvino(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # `import openvino` raises ImportError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_test_checkpoint(spread_model("fcos-n"), tmp_path_factory.mktemp("ckpt") / "best.pt", imgsz=64)


def _one_line_hint(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


def test_export_without_openvino_says_how_to_install(no_openvino, tmp_path, checkpoint, capsys):
    with pytest.raises(ValueError, match=r"pip install openvino .*pip install -e '\.\[export\]'"):
        export_model(spread_model("fcos-n"), NAMES, "openvino", tmp_path / "out" / "m", imgsz=64)
    assert not (tmp_path / "out").exists()  # refused before the ONNX step wrote anything
    assert main(["export", f"model={checkpoint}", "format=openvino"]) == 1
    _one_line_hint(capsys, "pip install openvino")
    assert not checkpoint.with_suffix(".xml").exists()


def test_openvino_model_without_openvino_says_how_to_install(no_openvino, tmp_path, capsys):
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="pip install openvino"):
        Predictor(xml)
    assert main(["predict", f"model={xml}", f"source={tmp_path}", "save=false"]) == 1
    _one_line_hint(capsys, "pip install openvino")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_export_without_tensorrt_cli_one_line(checkpoint, capsys):
    assert main(["export", f"model={checkpoint}", "format=tensorrt"]) == 1
    _one_line_hint(capsys, "pip install tensorrt")
