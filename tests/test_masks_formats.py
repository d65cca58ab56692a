"""Instance outlines in the formats: YOLO-seg and COCO (polygons, RLE) read into Sample.polygons
with hand-worked coordinates, bad polygons reported with their files, writers keep them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import faster_coco_eval.core.mask as coco_mask
import numpy as np
import pytest

from detforge.data.formats import load_dataset, write_dataset
from detforge.data.polygons import rasterize


def _image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _problems(data, kind):
    return [p for p in data.problems if p.kind == kind]


def test_yolo_seg_lines_give_outlines_box_lines_do_not(tmp_path):
    _image(tmp_path / "images/train/a.jpg", 80, 40)
    _text(tmp_path / "labels/train/a.txt",
          "0 0.25 0.25 0.75 0.25 0.5 1.0\n"     # a triangle: x 20..60, y 10..40
          "1 0.5 0.5 0.25 0.5\n"                # a box line: no outline
          "1 0.9 0.1 1.2 0.1 1.1 0.6\n")        # reaches 0.2 * 80 = 16 px past the right edge
    _image(tmp_path / "images/val/b.jpg", 80, 40, seed=1)
    _text(tmp_path / "labels/val/b.txt", "0 0.5 0.5 0.5 0.5\n")
    _text(tmp_path / "classes.txt", "a\nb\n")
    data = load_dataset(tmp_path)
    a = data.splits["train"][0]
    np.testing.assert_allclose(a.polygons[0][0], [[20, 10], [60, 10], [40, 40]], atol=1e-4)
    np.testing.assert_allclose(a.boxes[0], [20, 10, 60, 40], atol=1e-4)
    assert a.polygons[1] == []
    clipped = a.polygons[2][0]
    assert clipped[:, 0].max() == pytest.approx(80) and clipped.dtype == np.float32
    (problem,) = _problems(data, "out_of_range_polygon")
    assert problem.path.name == "a.txt" and "line 3" in problem.message and "clipped" in problem.message
    assert data.splits["val"][0].polygons is None  # a file of box lines: no outlines at all


def test_yolo_seg_written_and_read_back(tmp_path):
    _image(tmp_path / "src/images/train/a.jpg", 80, 40)
    _text(tmp_path / "src/labels/train/a.txt", "0 0.25 0.25 0.75 0.25 0.5 1.0\n1 0.5 0.5 0.25 0.5\n")
    _text(tmp_path / "src/classes.txt", "a\nb\n")
    data = load_dataset(tmp_path / "src")
    out = write_dataset(data, tmp_path / "out", "yolo")
    lines = (out / "labels/train/a.txt").read_text().splitlines()
    # every object of an image with outlines is written as a polygon (Ultralytics reads a file
    # with any polygon as all polygons): the box line becomes its four corners
    assert lines == ["0 0.25 0.25 0.75 0.25 0.5 1", "1 0.375 0.25 0.625 0.25 0.625 0.75 0.375 0.75"]
    back = load_dataset(out).splits["train"][0]
    np.testing.assert_allclose(back.boxes, data.splits["train"][0].boxes, atol=1e-4)
    np.testing.assert_allclose(back.polygons[0][0], data.splits["train"][0].polygons[0][0], atol=1e-4)


def _coco(tmp_path: Path, annotations: list[dict], w: int = 60, h: int = 40) -> Path:
    _image(tmp_path / "images/val/a.jpg", w, h)
    doc = {"images": [{"id": 7, "file_name": "a.jpg", "width": w, "height": h}],
           "annotations": [{"id": i + 1, "image_id": 7, "iscrowd": 0, **a} for i, a in enumerate(annotations)],
           "categories": [{"id": 1, "name": "thing"}]}
    _text(tmp_path / "annotations/instances_val.json", json.dumps(doc))
    return tmp_path


def test_coco_polygons_and_rle_become_outlines(tmp_path):
    mask = np.zeros((40, 60), np.uint8)
    mask[5:20, 30:50] = 1
    mask[10:14, 36:40] = 0  # a hole
    rle = coco_mask.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    root = _coco(tmp_path, [
        {"category_id": 1, "bbox": [2, 3, 20, 10], "segmentation": [[2, 3, 22, 3, 22, 13], [2, 20, 8, 20, 8, 30]]},
        {"category_id": 1, "bbox": [30, 5, 20, 15], "segmentation": rle},
        {"category_id": 1, "bbox": [0, 30, 10, 5], "segmentation": [[0, 30, 10, 30]]},  # 2 points
    ])
    data = load_dataset(root)
    s = data.splits["val"][0]
    assert len(s.polygons) == 3
    np.testing.assert_allclose(s.polygons[0][1], [[2, 20], [8, 20], [8, 30]])
    # RLE: traced into rings that rasterise back to the very same mask, hole included
    np.testing.assert_array_equal(rasterize(s.polygons[1], 40, 60), mask.astype(bool))
    assert s.polygons[2] == []  # the object keeps its box
    kinds = sorted(p.kind for p in data.problems)
    assert kinds == ["bad_polygon", "bad_polygon"]
    assert any("2 points" in p.message and "annotation id 3" in p.message for p in data.problems)


def test_box_only_reading_is_unchanged(tmp_path):
    root = _coco(tmp_path, [{"category_id": 1, "bbox": [2, 3, 20, 10]}])
    s = load_dataset(root).splits["val"][0]
    assert s.polygons is None and s.boxes.tolist() == [[2, 3, 22, 13]]


def test_data_check_reports_bad_polygons_with_their_files(tmp_path):
    from detforge.data.check import check_dataset

    _image(tmp_path / "images/train/a.jpg", 80, 40)
    _text(tmp_path / "labels/train/a.txt",
          "0 0.1 0.1 0.5 0.5 0.5 0.1 0.1 0.5\n"     # a bow tie: crosses itself
          "0 0.6 0.2 0.9 0.2 0.8 0.8\n"             # fine
          "0 0.9 0.1 1.3 0.1 1.1 0.6\n")            # leaves the image: clipped
    _image(tmp_path / "images/val/b.jpg", 80, 40, seed=1)
    _text(tmp_path / "labels/val/b.txt", "0 0.5 0.5 0.5 0.5\n")
    _text(tmp_path / "classes.txt", "a\n")
    report = check_dataset(load_dataset(tmp_path))
    (crossing,) = report.problems["self_crossing_polygon"]
    assert crossing["file"].endswith("a.jpg") and "object 0 polygon 0 crosses itself" in crossing["message"]
    (outside,) = report.problems["out_of_range_polygon"]
    assert outside["file"].endswith("a.txt") and "line 3" in outside["message"]
    text = report.format()
    assert "Instance outlines: 3 of 4 objects" in text and "self-crossing 1" in text and "out of the image 1" in text


def test_convert_round_trip_coco_yolo_seg_coco(synthetic_root, tmp_path, caplog):
    """The built-in set (exact outlines) -> COCO -> YOLO-seg -> COCO: the same outlines (as
    masks, pixel for pixel), boxes and classes every step; VOC says what it cannot keep."""
    from detforge.data.formats import convert_dataset

    src = load_dataset(synthetic_root)
    coco = load_dataset(convert_dataset(synthetic_root, "coco", tmp_path / "coco"))
    yolo = load_dataset(convert_dataset(tmp_path / "coco", "yolo", tmp_path / "yolo"))
    back = load_dataset(convert_dataset(tmp_path / "yolo", "coco", tmp_path / "coco2"))
    doc = json.loads((tmp_path / "coco/annotations/instances_train.json").read_text())
    ann = doc["annotations"][0]
    assert isinstance(ann["segmentation"], list) and ann["area"] < ann["bbox"][2] * ann["bbox"][3]
    for other in (coco, yolo, back):
        assert other.problems == [] and list(other.splits) == list(src.splits)
        for a, b in zip(src.splits["train"], sorted(other.splits["train"], key=lambda s: s.image_path.name)):
            assert a.image_path.name == b.image_path.name and a.labels.tolist() == b.labels.tolist()
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            assert (a.polygons is None) == (b.polygons is None)
            for ra, rb in zip(a.polygons or [], b.polygons or []):
                np.testing.assert_array_equal(rasterize(ra, a.height, a.width), rasterize(rb, b.height, b.width))
    with caplog.at_level("WARNING"):
        convert_dataset(tmp_path / "yolo", "voc", tmp_path / "voc")
    assert "instance outlines are not written" in caplog.text
