"""A corpus of bad inputs: each is reported (reader and check) naming the file, the rest still loads.

The corpus is generated in a temporary folder, so these tests never depend on outside data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from detforge.data.check import check_dataset
from detforge.data.formats import DatasetError, load_dataset
from detforge.data.image_io import image_size, read_image

W, H = 64, 48
GOOD = "0 0.5 0.5 0.25 0.5\n"  # -> [24, 12, 40, 36] on a 64x48 image
BOX_CASES = {  # image stem -> (label text, problem kind, boxes kept)
    "degenerate": ("0 0.5 0.5 0.0 0.2\n0 0.5 0.5 0.2 -0.1\n" + GOOD, "degenerate_box", [[24, 12, 40, 36]]),
    "out_of_range": ("0 0.9 0.5 0.4 0.5\n0 1.5 1.5 0.1 0.1\n" + GOOD, "out_of_range_box",
                     [[44.8, 12, 64, 36], [24, 12, 40, 36]]),
    "nonfinite": ("1 nan 0.5 0.1 0.1\n1 0.5 0.5 inf 0.1\n" + GOOD, "nonfinite_box", [[24, 12, 40, 36]]),
    "bad_class": ("7 0.5 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n" + GOOD, "bad_class", [[24, 12, 40, 36]]),
    "malformed": ("0 0.5 0.5\na b c d e\n0 0.1 0.1 0.1 0.1 0.9\n" + GOOD, "malformed_line", [[24, 12, 40, 36]]),
}
UNREADABLE = {"truncated.jpg": "truncated", "not_an_image.jpg": "not an image", "zero_bytes.jpg": "empty file"}


def _noise(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _jpg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), _noise(seed))
    return path


def exif6_displayed() -> np.ndarray:
    """What a viewer shows: 48 wide, 64 high, a red block in the top-left 24x16 pixels."""
    shown = np.full((64, 48, 3), 200, np.uint8)
    shown[:16, :24] = (255, 0, 0)
    return shown


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    img, lab = root / "images" / "train", root / "labels" / "train"
    _write(root / "classes.txt", "a\nb\nc\n")
    for i in range(3):
        _jpg(img / f"good{i}.jpg", i)
        _write(lab / f"good{i}.txt", GOOD)
    # unreadable images (each with a label, which must not resurrect them)
    ok, big = cv2.imencode(".jpg", _noise(9, 256, 192), [cv2.IMWRITE_JPEG_QUALITY, 95])
    _write(img / "truncated.jpg", big.tobytes()[: len(big) * 6 // 10])
    _write(img / "not_an_image.jpg", "name,value\nthis is a csv file,1\n")
    _write(img / "zero_bytes.jpg", b"")
    for name in UNREADABLE:
        _write(lab / f"{Path(name).stem}.txt", GOOD)
    # unusual but valid pixel formats
    cv2.imwrite(str(img / "gray.png"), np.full((H, W), 100, np.uint8))
    cv2.imwrite(str(img / "gray16.png"), np.full((H, W, 3), 25700, np.uint16))  # 25700 / 257 = 100
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (30, 20, 10), 0  # BGR order for OpenCV: RGB (10, 20, 30), transparent
    cv2.imwrite(str(img / "rgba.png"), rgba)
    for stem in ("gray", "gray16", "rgba"):
        _write(lab / f"{stem}.txt", GOOD)
    # EXIF orientation 6: stored 64x48, shown 48x64; the label was drawn on the shown image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(exif6_displayed(), k=1)).save(img / "exif6.jpg", exif=exif, quality=95)
    _write(lab / "exif6.txt", "2 0.25 0.125 0.5 0.25\n")  # the red block: [0, 0, 24, 16]
    # label trouble
    _jpg(img / "no_label.jpg", 20)
    _write(lab / "ghost.txt", GOOD)
    _jpg(img / "empty_label.jpg", 21)
    _write(lab / "empty_label.txt", "")
    for i, (stem, (text, _, _)) in enumerate(BOX_CASES.items()):
        _jpg(img / f"{stem}.jpg", 30 + i)
        _write(lab / f"{stem}.txt", text)
    # val: one good image and a byte copy of a train image (a leak); test: an empty split
    _jpg(root / "images/val/val_good.jpg", 40)
    _write(root / "labels/val/val_good.txt", GOOD)
    shutil.copy(img / "good0.jpg", root / "images/val/copy_of_good0.jpg")
    _write(root / "labels/val/copy_of_good0.txt", GOOD)
    (root / "images/test").mkdir(parents=True)
    (root / "labels/test").mkdir(parents=True)
    data = load_dataset(root)
    return root, data, check_dataset(data)


def _problems(data, name: str, kind: str | None = None):
    return [p for p in data.problems if p.path.name == name and (kind is None or p.kind == kind)]


def _reported(report, name: str, kind: str) -> list[dict]:
    return [p for p in report.problems.get(kind, []) if Path(p["file"]).name == name]


def _sample(data, name: str):
    found = [s for v in data.splits.values() for s in v if s.image_path.name == name]
    return found[0] if found else None


def test_every_good_sample_still_loads(corpus):
    _, data, report = corpus
    train = sorted(s.image_path.name for s in data.splits["train"])
    expected = [f"good{i}.jpg" for i in range(3)] + ["gray.png", "gray16.png", "rgba.png", "exif6.jpg",
                                                     "no_label.jpg", "empty_label.jpg"] + \
        [f"{stem}.jpg" for stem in BOX_CASES]
    assert train == sorted(expected)
    assert sorted(s.image_path.name for s in data.splits["val"]) == ["copy_of_good0.jpg", "val_good.jpg"]
    assert report.images == len(expected) + 2 and report.images_left_out == len(UNREADABLE)


@pytest.mark.parametrize("name", list(UNREADABLE))
def test_unreadable_image_is_left_out_with_the_reason(corpus, name):
    _, data, report = corpus
    (problem,) = _problems(data, name)
    assert problem.kind == "unreadable_image" and problem.fatal_for_sample
    assert UNREADABLE[name] in problem.message and str(problem).startswith(str(problem.path))
    assert _sample(data, name) is None
    assert _reported(report, name, "unreadable_image")


@pytest.mark.parametrize("name, value", [("gray.png", (100, 100, 100)), ("gray16.png", (100, 100, 100)),
                                         ("rgba.png", (10, 20, 30))])
def test_gray_16bit_and_rgba_images_load_as_rgb8(corpus, name, value):
    root, data, _ = corpus
    assert _problems(data, name) == []
    assert _sample(data, name) is not None and _sample(data, name).labels.tolist() == [0]
    pixels = read_image(root / "images/train" / name)
    assert pixels.shape == (H, W, 3) and pixels.dtype == np.uint8
    assert (pixels == value).all()


def test_exif_rotated_jpeg_uses_displayed_size_pixels_and_boxes(corpus):
    root, data, _ = corpus
    path = root / "images/train/exif6.jpg"
    assert Image.open(path).size == (64, 48)  # as stored
    assert image_size(path) == (48, 64)  # as displayed
    s = _sample(data, "exif6.jpg")
    assert (s.width, s.height) == (48, 64) and _problems(data, "exif6.jpg") == []
    np.testing.assert_allclose(s.boxes, [[0, 0, 24, 16]], atol=1e-4)
    pixels = read_image(path)
    assert pixels.shape == (64, 48, 3)
    x1, y1, x2, y2 = s.boxes[0].astype(int)
    inside = pixels[y1:y2, x1:x2].reshape(-1, 3).mean(0)
    outside = pixels[32:, 24:].reshape(-1, 3).mean(0)
    assert inside[0] > 200 and inside[1] < 60  # red under the box (JPEG-close)
    assert abs(outside - 200).max() < 15  # grey elsewhere
    assert np.abs(pixels.astype(int) - exif6_displayed()).mean() < 6


def test_missing_orphan_and_empty_label_files(corpus):
    _, data, report = corpus
    (missing,) = _problems(data, "no_label.jpg")
    assert missing.kind == "missing_label" and "no_label.txt" in missing.message
    assert _sample(data, "no_label.jpg").is_background  # kept as a background image
    (orphan,) = _problems(data, "ghost.txt")
    assert orphan.kind == "orphan_label" and "no image" in orphan.message
    assert _problems(data, "empty_label.jpg") == [] and _problems(data, "empty_label.txt") == []
    assert _sample(data, "empty_label.jpg").is_background
    assert report.splits["train"].background == 2
    assert _reported(report, "no_label.jpg", "missing_label") and _reported(report, "ghost.txt", "orphan_label")


@pytest.mark.parametrize("stem", list(BOX_CASES))
def test_bad_boxes_are_reported_and_the_good_box_kept(corpus, stem):
    _, data, report = corpus
    _, kind, kept = BOX_CASES[stem]
    problems = _problems(data, f"{stem}.txt")
    expected = 3 if stem == "malformed" else 2
    assert [p.kind for p in problems] == [kind] * expected
    assert all(p.message.startswith("line ") for p in problems)
    s = _sample(data, f"{stem}.jpg")
    np.testing.assert_allclose(s.boxes, kept, atol=1e-4)
    assert len(_reported(report, f"{stem}.txt", kind)) == expected


def test_out_of_range_boxes_clipped_or_dropped(corpus):
    _, data, _ = corpus
    clipped, dropped = _problems(data, "out_of_range.txt")
    assert clipped.message.endswith("clipped") and not clipped.drops_box
    assert dropped.message.endswith("dropped") and dropped.drops_box


def test_duplicate_image_across_train_and_val_is_a_leak(corpus):
    _, _, report = corpus
    assert [(lk["split_a"], Path(lk["image_a"]).name, lk["split_b"], Path(lk["image_b"]).name)
            for lk in report.leaks] == [("train", "good0.jpg", "val", "copy_of_good0.jpg")]
    assert "Leaks (identical images in two splits): 1 pairs" in report.format()


def test_empty_split_is_reported(corpus):
    root, data, report = corpus
    assert data.splits["test"] == []
    (problem,) = [p for p in data.problems if p.kind == "empty_split"]
    assert problem.path == root / "images/test" and "'test'" in problem.message
    assert report.problems["empty_split"][0]["split"] == "test"


def test_coco_dangling_image_id(tmp_path):
    _jpg(tmp_path / "images/train/a.jpg", 0)
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}],
           "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]},
                           {"id": 6, "image_id": 99, "category_id": 1, "bbox": [1, 2, 10, 10]}],
           "categories": [{"id": 1, "name": "x"}]}
    _write(tmp_path / "annotations/instances_train.json", json.dumps(doc))
    data = load_dataset(tmp_path)
    (problem,) = data.problems
    assert problem.kind == "dangling_annotation" and problem.path.name == "instances_train.json"
    assert "annotation id 6" in problem.message and "image_id 99" in problem.message
    np.testing.assert_allclose(data.splits["train"][0].boxes, [[1, 2, 11, 12]])
    assert check_dataset(data).problem_counts() == {"dangling_annotation": 1}
    assert check_dataset(data).boxes_in_files == 2


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_no_images_at_all_is_a_structural_error(tmp_path):
    (tmp_path / "images/train").mkdir(parents=True)
    (tmp_path / "labels/train").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert _one_line(err).startswith(f"{tmp_path}: no usable images")


def test_only_unreadable_images_is_a_structural_error(tmp_path):
    _write(tmp_path / "images/train/zero.jpg", b"")
    _write(tmp_path / "labels/train/zero.txt", GOOD)
    _write(tmp_path / "classes.txt", "a\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path)
    assert "zero.jpg: empty file" in _one_line(err)


def test_unknown_layout_is_a_structural_error(tmp_path):
    _jpg(tmp_path / "photos/a.jpg", 0)
    with pytest.raises(DatasetError, match="cannot tell the dataset layout") as err:
        load_dataset(tmp_path)
    assert str(err.value).splitlines()[0].startswith(str(tmp_path))


def test_missing_names_is_a_structural_error(tmp_path):
    _jpg(tmp_path / "images/train/a.jpg", 0)
    _write(tmp_path / "labels/train/a.txt", GOOD)
    _write(tmp_path / "data.yaml", "train: images/train\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "data.yaml")
    assert _one_line(err) == f"{tmp_path / 'data.yaml'}: 'names' is missing (a list of class names or {{id: name}})"
    unlabelled = tmp_path / "unlabelled"
    _jpg(unlabelled / "images/train/a.jpg", 0)
    _write(unlabelled / "labels/train/a.txt", "")
    with pytest.raises(DatasetError) as err:
        load_dataset(unlabelled)
    assert "class names are missing" in _one_line(err)
