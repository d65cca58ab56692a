"""The built-in synthetic dataset: deterministic, balanced, tight boxes, reused when complete."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from detforge.data.formats import load_dataset
from detforge.data.polygons import rasterize
from detforge.data.synthetic import BACKGROUND_FRACTION, MANIFEST, NAMES, VERSION, ensure_synthetic, render_sample


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _renders(n: int, size: int = 128):
    return [render_sample(np.random.default_rng([7, i]), size) for i in range(n)]


def test_same_bytes_twice_and_loadable(tmp_path):
    a = ensure_synthetic(tmp_path / "a", n_train=10, n_val=4, size=96, seed=3)
    b = ensure_synthetic(tmp_path / "b", n_train=10, n_val=4, size=96, seed=3)
    assert _files(a) == _files(b)
    assert _files(a) != _files(ensure_synthetic(tmp_path / "c", n_train=10, n_val=4, size=96, seed=4))
    data = load_dataset(a)
    assert data.names == list(NAMES) and data.problems == []
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 10, "val": 4}
    assert all((s.width, s.height) == (96, 96) for v in data.splits.values() for s in v)


def test_complete_copy_is_reused_and_incomplete_one_regenerated(tmp_path):
    root = ensure_synthetic(tmp_path / "s", n_train=6, n_val=2, size=64)
    original = _files(root)
    image = root / "images/train/train_00000.jpg"
    stamp = image.stat().st_mtime_ns
    assert ensure_synthetic(root, n_train=6, n_val=2, size=64) == root
    assert image.stat().st_mtime_ns == stamp  # reused, not rewritten
    image.write_bytes(image.read_bytes()[:100])  # an interrupted write
    (root / "user_notes.txt").write_text("keep me")
    ensure_synthetic(root, n_train=6, n_val=2, size=64)
    assert _files(root) == {**original, "user_notes.txt": b"keep me"}
    ensure_synthetic(root, n_train=6, n_val=3, size=64)  # other parameters: regenerated to match
    assert json.loads((root / MANIFEST).read_text())["n_val"] == 3
    assert len(list((root / "images/val").iterdir())) == 3
    assert not list(tmp_path.glob(".s.partial-*"))


def test_default_location_follows_detforge_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFORGE_CACHE", str(tmp_path / "cache"))
    root = ensure_synthetic(n_train=4, n_val=2, size=64, seed=1)
    assert root.parent == tmp_path / "cache" and root.name.startswith(f"synthetic-v{VERSION}")
    assert (root / "data.yaml").is_file()


def test_built_in_dataset_is_the_default_of_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DETFORGE_CACHE", str(tmp_path))
    data = load_dataset(None)
    assert data.layout == "synthetic" and data.root == tmp_path / f"synthetic-v{VERSION}"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 240, "val": 60}
    assert all((s.width, s.height) == (320, 320) for s in data.splits["train"])


def test_class_balance_background_share_and_sizes():
    renders = _renders(300)
    counts = Counter(label for r in renders for label in r.labels.tolist())
    total = sum(counts.values())
    assert set(counts) == set(range(len(NAMES)))
    assert all(0.18 < counts[c] / total < 0.32 for c in counts), counts
    background = sum(len(r.labels) == 0 for r in renders) / len(renders)
    assert abs(background - BACKGROUND_FRACTION) < 0.05, background
    sides = np.concatenate([np.maximum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1])
                            for r in renders]) / 128
    assert sides.min() >= 0.05 and sides.max() <= 0.6
    assert sides.min() < 0.12 and sides.max() > 0.35  # the whole 8..40% range is used
    overlapping = sum(_any_overlap(r.boxes) for r in renders)
    assert overlapping > 10  # some objects overlap


def _any_overlap(boxes: np.ndarray) -> bool:
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                return True
    return False


def test_boxes_tightly_bound_the_drawn_shapes_and_outlines_are_exact():
    single = 0
    for r in _renders(120):
        changed = (r.image != r.background).any(axis=2)
        assert len(r.polygons) == len(r.boxes)
        for box, rings in zip(r.boxes, r.polygons):
            # the box is the outline's bounds, and the painted pixels reach within 2.5 px of each
            # side (a star's sharp tip narrows below a pixel before it ends)
            pts = np.concatenate(rings)
            np.testing.assert_allclose(box, [*pts.min(0), *pts.max(0)], atol=1e-4)
            ys, xs = np.nonzero(rasterize(rings, 128, 128))
            painted = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(painted - box).max() <= 2.5
        if len(r.boxes) == 1:  # nothing else drawn: the changed pixels are exactly the outline's
            single += 1
            np.testing.assert_array_equal(rasterize(r.polygons[0], 128, 128), changed)
        if len(r.boxes) == 0:
            assert not changed.any()
    assert single >= 5


def test_objects_range_sets_a_sparse_set_and_leaves_the_default_alone(tmp_path):
    sparse = [render_sample(np.random.default_rng([7, i]), 128, objects=(1, 2)) for i in range(40)]
    counts = Counter(len(s.labels) for s in sparse)
    assert set(counts) <= {0, 1, 2} and counts[1] > 0 and counts[2] > 0
    # the default range draws the same images as before the setting existed
    for a, b in zip(_renders(5), [render_sample(np.random.default_rng([7, i]), 128, objects=(1, 6)) for i in range(5)]):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    root = ensure_synthetic(tmp_path / "sp", n_train=6, n_val=2, size=64, objects=(1, 2))
    assert json.loads((root / MANIFEST).read_text())["objects"] == [1, 2]
    assert "objects" not in json.loads((ensure_synthetic(tmp_path / "d", n_train=2, n_val=1, size=64) / MANIFEST).read_text())
    try:
        render_sample(np.random.default_rng(0), 64, objects=(2, 1))
    except ValueError as e:
        assert "objects=(2, 1)" in str(e)
    else:
        raise AssertionError("objects=(2, 1) was accepted")
