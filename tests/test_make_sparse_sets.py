"""benchmarks/make_sparse_sets.py: the proxy sets' class edits keep every box."""

import importlib.util
from pathlib import Path

import numpy as np

from detforge.records import DetectionData, Sample

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_sparse_sets.py"
spec = importlib.util.spec_from_file_location("make_sparse_sets", SCRIPT)
make_sparse_sets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_sparse_sets)


def _data() -> DetectionData:
    outline = [[np.array([[0, 0], [10, 0], [0, 10]], np.float32)], []]  # a triangle; no outline for the 2nd
    a = Sample(Path("a.jpg"), np.array([[0, 0, 10, 10], [20, 20, 40, 30]], np.float32), np.array([2, 0]), 64, 48,
               polygons=outline)
    b = Sample(Path("b.jpg"), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 64, 48)
    c = Sample(Path("c.jpg"), np.array([[5, 5, 9, 9]], np.float32), np.array([1]), 64, 48,
               crowd_boxes=np.array([[30, 30, 60, 40]], np.float32), crowd_labels=np.array([2]))
    return DetectionData(["circle", "square", "star"], {"train": [a, b], "val": [c]}, Path("."), "yolo")


def test_merged_keeps_every_image_and_box_as_one_class():
    out = make_sparse_sets.merged(_data(), "shape")
    assert out.names == ["shape"]
    assert [len(s.labels) for s in out.splits["train"]] == [2, 0] and len(out.splits["val"]) == 1
    np.testing.assert_array_equal(out.splits["train"][0].boxes, _data().splits["train"][0].boxes)
    assert all((s.labels == 0).all() and s.labels.dtype == np.int64 for split in out.splits.values() for s in split)
    # outlines and crowd regions stay (the crowd region in the one class)
    np.testing.assert_array_equal(out.splits["train"][0].polygons[0][0], [[0, 0], [10, 0], [0, 10]])
    assert out.splits["train"][0].polygons[1] == []
    np.testing.assert_array_equal(out.splits["val"][0].crowd_boxes, [[30, 30, 60, 40]])
    np.testing.assert_array_equal(out.splits["val"][0].crowd_labels, [0])


def test_one_class_drops_images_without_it():
    out, dropped = make_sparse_sets.one_class(_data(), "circle")
    assert out.names == ["circle"] and dropped == {"train": 1, "val": 1}
    kept = out.splits["train"][0]
    np.testing.assert_array_equal(kept.boxes, [[20, 20, 40, 30]])
    np.testing.assert_array_equal(kept.labels, [0])
