"""The command line: dispatch, refusals with clear messages, and the data / eval commands."""

from __future__ import annotations

import json

import pytest

from detforge.cli import main


def test_help_and_models(capsys):
    assert main([]) == 0
    assert "detforge <command>" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ["dfine-n", "dfine-x", "fcos-n"]:
        assert name in out
    assert main(["help", "keys"]) == 0
    assert "close_mosaic" in capsys.readouterr().out


def test_action_help_lists_its_keys(capsys):
    # `--help` after a sub-command's action lists that action's keys with their defaults, exit 0
    assert main(["bench", "data", "--help"]) == 0
    out = capsys.readouterr().out
    assert "detforge bench data" in out and "batches" in out and "20" in out
    assert main(["data", "convert", "-h"]) == 0
    assert "link" in capsys.readouterr().out
    assert main(["bench", "stability", "--help"]) == 0
    assert "help keys train" in capsys.readouterr().out


def test_refusals_name_the_problem(capsys, tmp_path):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
    assert main(["train", "epoch=3"]) == 2
    assert "unknown key 'epoch'; detforge calls it 'epochs'" in capsys.readouterr().err
    assert main(["train", "optimizer=adagrad"]) == 2
    assert "'optimizer'" in capsys.readouterr().err
    assert main(["train", "model=dfine-q", "data=/nonexistent/x"]) != 0
    assert main(["val"]) == 2
    assert "model=" in capsys.readouterr().err
    assert main(["data", "split", "data=x"]) == 2
    assert main(["train", "data=/nonexistent/folder", "device=cpu", f"project={tmp_path}"]) == 1
    assert "/nonexistent/folder" in capsys.readouterr().err
    assert main(["train", "model=nonexistent-model", f"project={tmp_path}"]) == 2
    assert list(tmp_path.iterdir()) == []  # a failed command leaves no run folder behind


def test_data_check_on_bccd(bccd_root, capsys, tmp_path):
    out = tmp_path / "report.json"
    # BCCD has two zero-size boxes: check reports them with their files and exits 1
    assert main(["data", "check", f"data={bccd_root}", f"out={out}"]) == 1
    text = capsys.readouterr().out
    assert "364" in text and "4888" in text and "BloodImage_00343.xml" in text
    report = json.loads(out.read_text())
    assert report["images"] == 364


def test_data_convert_says_what_it_dropped(bccd_root, tmp_path, capsys):
    assert main(["data", "convert", f"data={bccd_root}", "to=yolo", f"out={tmp_path / 'y'}", "link=true"]) == 0
    out = capsys.readouterr().out
    assert "2 problems" in out and "degenerate_box: 2" in out
    assert "BloodImage_00343.xml" in out and "BloodImage_00338.xml" in out


def test_data_check_exits_0_on_a_clean_set(synthetic_root, capsys):
    assert main(["data", "check", f"data={synthetic_root}"]) == 0
    assert "No problems found." in capsys.readouterr().out


def test_data_convert_round_trip(synthetic_root, tmp_path):
    from detforge.data.formats import load_dataset

    assert main(["data", "convert", f"data={synthetic_root}", "to=coco", f"out={tmp_path / 'coco'}"]) == 0
    a, b = load_dataset(synthetic_root), load_dataset(tmp_path / "coco")
    assert b.layout == "coco" and a.names == b.names
    key = lambda s: s.image_path.name  # noqa: E731
    for split in ("train", "val"):
        for sa, sb in zip(sorted(a.splits[split], key=key), sorted(b.splits[split], key=key)):
            assert sa.image_path.name == sb.image_path.name
            assert (sa.labels == sb.labels).all()
            assert abs(sa.boxes - sb.boxes).max(initial=0) < 1e-3


def test_eval_command_on_perfect_predictions(tmp_path, capsys):
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 20, 40], "area": 800, "iscrowd": 0},
        ],
    }
    pred = [
        {"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [50, 50, 20, 40], "score": 0.8},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    save = tmp_path / "out"
    assert main(["eval", f"gt={tmp_path / 'gt.json'}", f"pred={tmp_path / 'pred.json'}", f"save_dir={save}"]) == 0
    m = json.loads((save / "metrics.json").read_text())
    for key in ["map50_95", "map50", "precision", "recall", "f1", "iou"]:
        assert m[key] == pytest.approx(1.0), key
    assert "mAP50-95 1.0000" in capsys.readouterr().out


def test_user_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["val", f"model={tmp_path / 'missing.pt'}"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    plain = tmp_path / "plain.pt"
    import torch

    torch.save({"w": torch.zeros(1)}, plain)
    assert main(["val", f"model={plain}"]) == 1
    assert "not a detforge checkpoint" in capsys.readouterr().err


def test_numbers_and_dates_are_names_where_names_are_expected():
    from detforge.config import build_config, parse_overrides

    cfg = build_config(parse_overrides(["name=2024", "source=0", "data=2024-05-01", "project=7"]))
    assert (cfg.name, cfg.source, cfg.data, cfg.project) == ("2024", "0", "2024-05-01", "7")
