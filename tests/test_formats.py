"""Format readers and writers: hand-worked coordinates, layout detection, round trips."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detforge.data.formats import LAYOUTS, DatasetError, convert_dataset, detect_layout, load_dataset, write_dataset


def _image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _by_name(samples):
    return {s.image_path.name: s for s in samples}


def _kinds(data):
    return sorted(p.kind for p in data.problems)


# --- YOLO ---------------------------------------------------------------------------------------

def test_yolo_nested_hand_worked_boxes(tmp_path):
    _image(tmp_path / "images/train/a.jpg", 64, 48)
    _text(tmp_path / "labels/train/a.txt", "1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n")
    _image(tmp_path / "images/val/b.png", 100, 50, seed=1)
    _text(tmp_path / "labels/val/b.txt", "")
    _text(tmp_path / "classes.txt", "cat\ndog\n")
    data = load_dataset(tmp_path)
    assert data.layout == "yolo" and data.names == ["cat", "dog"]
    a = data.splits["train"][0]
    assert (a.width, a.height) == (64, 48)
    np.testing.assert_allclose(a.boxes, [[24, 12, 40, 36], [0, 0, 16, 24]], atol=1e-4)
    assert a.labels.tolist() == [1, 0] and a.boxes.dtype == np.float32 and a.labels.dtype == np.int64
    b = data.splits["val"][0]
    assert b.is_background and (b.width, b.height) == (100, 50)
    assert data.problems == []  # an empty label file is a background image, not a problem


def test_yolo_flat_roboflow_layout_valid_split_and_polygon(tmp_path):
    _image(tmp_path / "train/images/a.jpg", 80, 40)
    # polygon (segmentation) line: its bounding box is x 0.25..0.75, y 0.25..1.0
    _text(tmp_path / "train/labels/a.txt", "0 0.25 0.25 0.75 0.25 0.5 1.0\n")
    _image(tmp_path / "valid/images/b.jpg", 80, 40, seed=2)
    _text(tmp_path / "valid/labels/b.txt", "0 0.5 0.5 0.5 0.5\n")
    data = load_dataset(tmp_path)
    assert set(data.splits) == {"train", "val"}
    np.testing.assert_allclose(data.splits["train"][0].boxes, [[20, 10, 60, 40]], atol=1e-4)
    assert data.names == ["class0"] and _kinds(data) == ["invented_names"]
    assert "invented" in data.problems[0].message


def test_yolo_without_split_folders_makes_deterministic_80_20_split(tmp_path):
    for i in range(10):
        _image(tmp_path / f"images/img{i}.jpg", 32, 32, seed=i)
        _text(tmp_path / f"labels/img{i}.txt", "0 0.5 0.5 0.5 0.5\n")
    _text(tmp_path / "names.txt", "thing\n")
    first, second = load_dataset(tmp_path), load_dataset(tmp_path)
    assert len(first.splits["train"]) == 8 and len(first.splits["val"]) == 2
    assert [s.image_path for s in first.splits["val"]] == [s.image_path for s in second.splits["val"]]
    assert _kinds(first) == ["auto_split"] and "80/20" in first.problems[0].message


# --- data.yaml -----------------------------------------------------------------------------------

def test_data_yaml_dict_names_txt_list_and_roboflow_parent_paths(tmp_path):
    root = tmp_path / "ds"
    _image(root / "train/images/a.jpg")
    _text(root / "train/labels/a.txt", "2 0.5 0.5 0.5 0.5\n")
    _image(root / "valid/images/b.jpg", seed=3)
    _text(root / "valid/labels/b.txt", "0 0.5 0.5 0.5 0.5\n")
    _image(root / "extra/images/c.jpg", seed=4)
    _text(root / "extra/labels/c.txt", "1 0.5 0.5 0.5 0.5\n")
    _text(root / "test.txt", "./extra/images/c.jpg\n")
    # Roboflow writes ../train/images beside the train folder; names as {id: name}
    _text(root / "data.yaml", "train: ../train/images\nval: valid/images\ntest: test.txt\n"
                              "names: {0: a, 1: b, 2: c}\nnc: 3\n")
    data = load_dataset(root / "data.yaml")
    assert data.layout == "data.yaml" and data.names == ["a", "b", "c"]
    assert {k: [s.labels.tolist() for s in v] for k, v in data.splits.items()} == \
        {"train": [[2]], "val": [[0]], "test": [[1]]}
    assert load_dataset(root).layout == "data.yaml"  # a folder holding a data.yaml


def test_data_yaml_structural_errors(tmp_path):
    _image(tmp_path / "images/train/a.jpg")
    _text(tmp_path / "labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n")
    _text(tmp_path / "no_names.yaml", "path: .\ntrain: images/train\n")
    with pytest.raises(DatasetError, match=r"no_names.yaml: 'names' is missing"):
        load_dataset(tmp_path / "no_names.yaml")
    _text(tmp_path / "bad_split.yaml", "train: images/train\nval: images/nope\nnames: [x]\n")
    with pytest.raises(DatasetError, match=r"bad_split.yaml: val: 'images/nope' does not exist"):
        load_dataset(tmp_path / "bad_split.yaml")
    _text(tmp_path / "bad_nc.yaml", "train: images/train\nnames: [x]\nnc: 2\n")
    with pytest.raises(DatasetError, match="nc=2 but 1 names"):
        load_dataset(tmp_path / "bad_nc.yaml")


# --- CSV split lists ------------------------------------------------------------------------------

def test_csv_split_lists_with_and_without_header(tmp_path):
    for i in range(3):
        _image(tmp_path / f"images/im{i}.jpg", 40, 20, seed=i)
        _text(tmp_path / f"labels/im{i}.txt", f"{i % 2} 0.5 0.5 0.5 0.5\n")
    _text(tmp_path / "train.csv", "image_path,other\nim0.jpg,x\nim1.jpg,y\n")
    _text(tmp_path / "val.csv", "im2.jpg\n")
    _text(tmp_path / "classes.txt", "p\nq\n")
    data = load_dataset(tmp_path)
    assert data.layout == "csv" and data.problems == []
    assert [s.image_path.name for s in data.splits["train"]] == ["im0.jpg", "im1.jpg"]
    assert [s.labels.tolist() for s in data.splits["train"]] == [[0], [1]]
    np.testing.assert_allclose(data.splits["val"][0].boxes, [[10, 5, 30, 15]], atol=1e-4)


# --- COCO -----------------------------------------------------------------------------------------

def _coco(root: Path, split: str, cat_ids: list[int], anns: list[dict], images: list[tuple[str, int, int]]):
    for i, (name, w, h) in enumerate(images):
        _image(root / "images" / split / name, w, h, seed=i)
    doc = {"images": [{"id": 10 + i, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(images)],
           "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    _text(root / "annotations" / f"instances_{split}.json", json.dumps(doc))


@pytest.mark.parametrize("cat_ids", [[0, 1, 2], [1, 2, 3], [7, 1, 3]])
def test_coco_category_ids_of_any_base_map_to_sorted_contiguous_labels(tmp_path, cat_ids):
    anns = [{"id": 1, "image_id": 10, "category_id": cat_ids[0], "bbox": [4.5, 6, 10, 20], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": cat_ids[2], "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 10, "category_id": cat_ids[1], "bbox": [1, 1, 30, 30], "iscrowd": 1}]
    _coco(tmp_path, "train", cat_ids, anns, [("a.jpg", 64, 48), ("b.jpg", 32, 32)])
    data = load_dataset(tmp_path)
    order = sorted(cat_ids)
    assert data.layout == "coco" and data.names == [f"c{c}" for c in order]
    a = _by_name(data.splits["train"])["a.jpg"]
    np.testing.assert_allclose(a.boxes, [[4.5, 6, 14.5, 26], [0, 0, 5, 5]])
    assert a.labels.tolist() == [order.index(cat_ids[0]), order.index(cat_ids[2])]
    assert _by_name(data.splits["train"])["b.jpg"].is_background
    # the crowd region is an ignore region of the sample, not a box and not a problem
    np.testing.assert_allclose(a.crowd_boxes, [[1, 1, 31, 31]])
    assert a.crowd_labels.tolist() == [order.index(cat_ids[1])] and a.image_id == 10
    assert data.category_ids == order and _kinds(data) == []
    out = write_dataset(data, tmp_path / "out", "coco")
    doc = json.loads((out / "annotations/instances_train.json").read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3]
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [1, 1, 30, 30]
    assert crowd[0]["category_id"] == order.index(cat_ids[1]) + 1
    assert [c["name"] for c in doc["categories"]] == data.names


def test_coco_roboflow_layout(tmp_path):
    for split in ("train", "valid"):
        _image(tmp_path / split / "x.jpg", 50, 40)
        doc = {"images": [{"id": 0, "file_name": "x.jpg", "width": 50, "height": 40}],
               "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 2, 3, 4]}],
               "categories": [{"id": 0, "name": "cells"}, {"id": 1, "name": "rbc"}]}
        _text(tmp_path / split / "_annotations.coco.json", json.dumps(doc))
    data = load_dataset(tmp_path)
    assert set(data.splits) == {"train", "val"} and data.names == ["cells", "rbc"]
    np.testing.assert_allclose(data.splits["val"][0].boxes, [[1, 2, 4, 6]])
    assert data.splits["val"][0].labels.tolist() == [1]


# --- Pascal VOC -----------------------------------------------------------------------------------

def _voc_xml(objects: list[tuple[str, int, int, int, int]], w: int = 64, h: int = 48, filename: str = "") -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{int(n == 'b')}</difficult><bndbox><xmin>{a}</xmin>"
                   f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


def test_voc_one_based_pixels_difficult_kept_and_auto_split(tmp_path):
    for i in range(5):
        _image(tmp_path / f"JPEGImages/im{i}.jpg", 64, 48, seed=i)
        # pixels 1..10 x 1..20 (1-based, inclusive) = [0, 0, 10, 20] in continuous coordinates
        _text(tmp_path / f"Annotations/im{i}.xml",
              _voc_xml([("a", 1, 1, 10, 20), ("b", 5, 6, 64, 48)], filename=f"im{i}.jpg"))
    data = load_dataset(tmp_path)
    assert data.layout == "voc" and data.names == ["a", "b"]
    assert len(data.splits["train"]) == 4 and len(data.splits["val"]) == 1
    assert _kinds(data) == ["auto_split"]
    s = data.splits["train"][0]
    np.testing.assert_array_equal(s.boxes, [[0, 0, 10, 20], [4, 5, 64, 48]])
    assert s.labels.tolist() == [0, 1]  # the difficult object is kept
    out = write_dataset(data, tmp_path / "voc_out", "voc")
    text = (out / "Annotations" / "im0.xml").read_text()
    assert "<xmin>1</xmin>" in text and "<xmax>10</xmax>" in text and "<ymax>20</ymax>" in text


def test_voc_split_files_and_missing_or_orphan_files(tmp_path):
    _image(tmp_path / "JPEGImages/a.jpg")
    _image(tmp_path / "JPEGImages/nolabel.jpg", seed=1)
    _text(tmp_path / "Annotations/a.xml", _voc_xml([("x", 2, 2, 9, 9)]))
    _text(tmp_path / "Annotations/ghost.xml", _voc_xml([("x", 2, 2, 9, 9)]))
    _text(tmp_path / "ImageSets/Main/train.txt", "a\nnolabel\n")
    _text(tmp_path / "ImageSets/Main/val.txt", "ghost\n")
    data = load_dataset(tmp_path)
    assert [s.image_path.name for s in data.splits["train"]] == ["a.jpg", "nolabel.jpg"]
    assert data.splits["train"][1].is_background
    kinds = {p.kind: p for p in data.problems}
    assert kinds["missing_label"].path.name == "nolabel.jpg"
    assert kinds["orphan_label"].path.name == "ghost.xml"
    assert kinds["empty_split"].message.startswith("split 'val'")


# --- BCCD and round trips -------------------------------------------------------------------------

def test_bccd_reads_fast_with_expected_counts(bccd_root):
    start = time.perf_counter()
    data = load_dataset(bccd_root)
    seconds = time.perf_counter() - start
    assert data.layout == "voc" and data.names == ["Platelets", "RBC", "WBC"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 205, "val": 87, "test": 72}
    assert sum(len(s.boxes) for v in data.splits.values() for s in v) == 4888 - 2
    assert _kinds(data) == ["degenerate_box", "degenerate_box"]
    assert {p.path.name for p in data.problems} == {"BloodImage_00338.xml", "BloodImage_00343.xml"}
    first = next(s for s in data.splits["train"] + data.splits["val"] + data.splits["test"]
                 if s.image_path.name == "BloodImage_00000.jpg")
    # first object of BloodImage_00000.xml: WBC xmin 260 ymin 177 xmax 491 ymax 376
    np.testing.assert_array_equal(first.boxes[0], [259, 176, 491, 376])
    assert data.names[first.labels[0]] == "WBC" and (first.width, first.height) == (640, 480)
    assert seconds < 2.0, f"reading BCCD took {seconds:.2f} s (header-only sizes should keep it well under 2 s)"


def _assert_same(a, b, atol):
    assert a.names == b.names and list(a.splits) == list(b.splits)
    for split in a.splits:
        sa, sb = _by_name(a.splits[split]), _by_name(b.splits[split])
        assert sa.keys() == sb.keys()
        for name in sa:
            assert (sa[name].width, sa[name].height) == (sb[name].width, sb[name].height)
            assert sa[name].labels.tolist() == sb[name].labels.tolist()
            np.testing.assert_allclose(sa[name].boxes, sb[name].boxes, atol=atol, rtol=0)


def test_round_trips_on_bccd_voc_yolo_coco(bccd_root, tmp_path):
    voc = load_dataset(bccd_root)
    yolo = load_dataset(convert_dataset(bccd_root, "yolo", tmp_path / "yolo", link=True))
    coco = load_dataset(convert_dataset(tmp_path / "yolo", "coco", tmp_path / "coco", link=True))
    voc2 = load_dataset(convert_dataset(tmp_path / "coco", "voc", tmp_path / "voc", link=True))
    _assert_same(voc, yolo, 1e-3)
    _assert_same(voc, coco, 1e-3)
    _assert_same(voc, voc2, 0)
    assert yolo.layout == "data.yaml" and coco.layout == "coco" and voc2.layout == "voc"


def test_round_trips_on_synthetic_with_copies(synthetic_root, tmp_path):
    src = load_dataset(synthetic_root)
    assert all(float(b).is_integer() for s in src.splits["train"] for b in s.boxes.ravel())  # VOC-exact
    coco = load_dataset(write_dataset(src, tmp_path / "coco", "coco"))
    voc = load_dataset(write_dataset(coco, tmp_path / "voc", "voc"))
    back = load_dataset(write_dataset(voc, tmp_path / "yolo", "yolo"))
    for other in (coco, voc, back):
        _assert_same(src, other, 1e-3)
    copied = next((tmp_path / "coco/images/train").iterdir())
    assert not copied.is_symlink() and copied.stat().st_size > 0


def test_yolo_writer_keeps_fractional_boxes_within_a_thousandth_of_a_pixel(tmp_path):
    from detforge.records import DetectionData, Sample

    img = _image(tmp_path / "src/big.jpg", 4000, 30)
    boxes = np.array([[0.1234, 1.5, 3999.87, 29.9], [1234.567, 3.25, 1300.001, 4.75]], np.float32)
    data = DetectionData(["a", "b"], {"train": [Sample(img, boxes, [0, 1], 4000, 30)]}, tmp_path, "yolo")
    back = load_dataset(write_dataset(data, tmp_path / "out", "yolo"))
    np.testing.assert_allclose(back.splits["train"][0].boxes, boxes, atol=1e-3, rtol=0)
    with pytest.raises(DatasetError, match="not empty"):
        write_dataset(data, tmp_path / "out", "yolo")
    with pytest.raises(DatasetError, match="cannot write layout 'csv'"):
        write_dataset(data, tmp_path / "other", "csv")


# --- layout detection -----------------------------------------------------------------------------

def test_unknown_layout_names_path_and_every_layout(tmp_path):
    _text(tmp_path / "readme.md", "hello")
    _image(tmp_path / "pictures/a.jpg")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    message = str(err.value)
    first, *rest = message.splitlines()
    assert first.startswith(f"{tmp_path}: cannot tell the dataset layout")
    assert len(rest) == len(LAYOUTS) and all(line.strip().split(":")[0] in LAYOUTS for line in rest)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_detect_layout_picks_each_layout(tmp_path):
    cases = {
        "voc": {"Annotations/a.xml": _voc_xml([])},
        "coco": {"annotations/instances_train.json": "{}"},
        "csv": {"train.csv": "a.jpg\n"},
        "yolo": {"images/train/.keep": "", "labels/train/.keep": ""},
        "data.yaml": {"data.yaml": "train: images\nnames: [a]\n"},
    }
    for layout, files in cases.items():
        for rel, text in files.items():
            _text(tmp_path / layout / rel, text)
        assert detect_layout(tmp_path / layout)[0] == layout


def test_data_yaml_foreign_absolute_path_falls_back_to_its_folder(tmp_path):
    _image(tmp_path / "images/train/a.jpg")
    _text(tmp_path / "labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n")
    _text(tmp_path / "data.yaml", "path: /content/datasets/someone-elses\ntrain: images/train\nnames: [x]\n")
    data = load_dataset(tmp_path / "data.yaml")
    assert data.root == tmp_path and len(data.splits["train"]) == 1
    assert _kinds(data) == ["path_not_found"] and "someone-elses" in data.problems[0].message


def test_yolo_val_and_valid_folders_are_merged(tmp_path):
    for split, name in (("train", "a"), ("val", "b"), ("valid", "c")):
        _image(tmp_path / f"images/{split}/{name}.jpg")
        _text(tmp_path / f"labels/{split}/{name}.txt", "0 0.5 0.5 0.5 0.5\n")
    data = load_dataset(tmp_path)
    assert sorted(s.image_path.name for s in data.splits["val"]) == ["b.jpg", "c.jpg"]
