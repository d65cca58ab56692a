"""Dataset health report: counts on the real BCCD set and on a hand-built dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from detforge.data.check import check_dataset
from detforge.data.formats import load_dataset
from detforge.records import DetectionData, Problem, Sample


def test_bccd_report_finds_all_boxes_and_the_two_degenerate_ones(bccd_root, tmp_path):
    report = check_dataset(load_dataset(bccd_root))
    assert report.images == 364 and report.boxes_in_files == 4888
    assert report.degenerate_boxes == 2 and report.boxes == 4886
    assert {p["file"].rsplit("/", 1)[-1] for p in report.problems["degenerate_box"]} == \
        {"BloodImage_00338.xml", "BloodImage_00343.xml"}
    # per-class totals as counted in the xml files (the two degenerate boxes are RBC)
    totals = {n: sum(s.boxes_per_class.get(n, 0) for s in report.splits.values()) for n in report.names}
    assert totals == {"Platelets": 361, "RBC": 4155 - 2, "WBC": 372}
    assert [report.splits[s].images for s in ("train", "val", "test")] == [205, 87, 72]
    assert report.leaks == [] and report.duplicates == {}
    text = report.format()
    assert "Boxes in the files: 4888 (4886 usable, 2 dropped)" in text
    assert any(line.split()[:2] == ["total", "364"] for line in text.splitlines())
    saved = json.loads(report.write_json(tmp_path / "check.json").read_text())
    assert saved["images"] == 364 and saved["boxes_in_files"] == 4888
    assert saved["problem_counts"] == {"degenerate_box": 2}


def _jpg(path: Path, seed: int, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def test_hand_built_dataset_counts_faults_tiny_boxes_duplicates_and_leaks(tmp_path):
    a, b = _jpg(tmp_path / "a.jpg", 0), _jpg(tmp_path / "b.jpg", 1)
    a_copy = tmp_path / "train_copy_of_a.jpg"
    shutil.copy(a, a_copy)
    leak = tmp_path / "val_copy_of_b.jpg"
    shutil.copy(b, leak)
    train = [
        Sample(a, [[0, 0, 3, 10], [5, 5, 9, 9], [1, 1, 20, 20]], [0, 1, 1], 40, 30),  # one tiny (3 px wide)
        Sample(a_copy, [[10, 10, 10, 20], [0, 0, 50, 10]], [0, 0], 40, 30),  # degenerate, out of range
        Sample(b, np.zeros((0, 4)), [], 40, 30),  # background
    ]
    val = [Sample(leak, [[np.nan, 0, 5, 5], [1, 1, 8, 8]], [1, 3], 40, 30)]  # NaN box, class 3 of 2
    reader_problem = Problem(tmp_path / "labels/x.txt", "malformed_line", "line 1: 'oops'; dropped")
    data = DetectionData(["p", "q"], {"train": train, "val": val}, tmp_path, "yolo", [reader_problem])
    report = check_dataset(data, tiny=4.0)
    assert report.splits["train"].images == 3 and report.splits["train"].background == 1
    assert report.splits["train"].boxes_per_class == {"p": 3, "q": 2}
    assert report.splits["train"].images_per_class == {"p": 2, "q": 1}
    # tiny: min side < 4 px -> [0,0,3,10] and the zero-width [10,10,10,20]; [5,5,9,9] is exactly 4
    assert report.splits["train"].tiny_boxes == 2
    assert (report.degenerate_boxes, report.out_of_range_boxes, report.nonfinite_boxes, report.bad_class_boxes) \
        == (1, 1, 1, 1)
    assert report.problem_counts()["malformed_line"] == 1
    assert report.boxes_in_files == 5 + 2 + 1  # boxes in samples + the dropped malformed line
    assert report.duplicates == {"train": [[str(a), str(a_copy)]]}
    assert report.leaks == [{"split_a": "train", "image_a": str(b), "split_b": "val", "image_b": str(leak)}]
    text = report.format()
    assert "Leaks (identical images in two splits): 1 pairs" in text and f"train:{b} == val:{leak}" in text
    assert "nonfinite_box: 1" in text and str(leak) in text


def test_clean_dataset_reports_no_problems(synthetic_root):
    report = check_dataset(load_dataset(synthetic_root))
    assert report.problems == {} and report.leaks == [] and report.duplicates == {}
    assert report.images == 64 and report.boxes_in_files == report.boxes > 0
    assert report.format().endswith("No problems found.")
