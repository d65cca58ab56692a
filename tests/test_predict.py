"""Predictor and `detforge predict`: the same detections from .pt, .onnx and OpenVINO .xml
on real images, in original-image pixels; letterbox geometry (square and cut padding) worked
by hand; per-class thresholds; the files predict writes for images, folders and videos."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from deploy_helpers import NAMES, assert_same_detections, save_test_checkpoint, spread_model

from detforge.data.image_io import read_image
from detforge.export import export_model
from detforge.export.metadata import read_onnx_metadata
from detforge.export.openvino import export_openvino
from detforge.infer.draw import class_color, draw_detections
from detforge.infer.predictor import Predictor
from detforge.infer.preprocess import Placement, boxes_to_original, cut_padding_letterbox, fit_image
from detforge.infer.sources import expand_paths
from detforge.records import Detections

IMGSZ = 160


@pytest.fixture(scope="module")
def files(bccd_root):
    return sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def models(tmp_path_factory, files):
    out = tmp_path_factory.mktemp("predict")
    model = spread_model("fcos-n")
    # per-class thresholds as a run would choose them: here each class keeps its ~15 best boxes
    everything = Predictor.from_model(model, NAMES, imgsz=IMGSZ, resize_mode="letterbox", conf=0.0, device="cpu").predict(files)
    scores = [np.sort(np.concatenate([d.scores[d.labels == c] for d in everything]))[::-1] for c in range(len(NAMES))]
    class_conf = [float(s[min(15, len(s) - 1)]) for s in scores]
    pt = save_test_checkpoint(model, out / "best.pt", IMGSZ, "letterbox", class_conf=class_conf)
    onnx_path = export_model(model, NAMES, "onnx", out / "best", imgsz=IMGSZ, resize_mode="letterbox",
                             dynamic=True, conf=class_conf)
    xml = export_openvino(onnx_path, out / "best.xml", read_onnx_metadata(onnx_path))
    return {"model": model, "pt": pt, "onnx": onnx_path, "xml": xml, "class_conf": class_conf}


def _same(a: list[Detections], b: list[Detections], floor: float) -> None:
    for da, db in zip(a, b, strict=True):
        assert_same_detections((da.boxes, da.scores, da.labels), (db.boxes, db.scores, db.labels), floor,
                               box_tol=4.0, score_tol=1e-3)  # 1 input px = 4 original px at 640 -> 160


@pytest.mark.parametrize("cut_padding", [False, True])
def test_backends_give_the_same_detections(models, files, cut_padding):
    # a threshold that keeps ~100 of the 300 slots, so the comparison never reaches the max_det cut
    full = Predictor(models["pt"], conf=0.0, threads=1, cut_padding=cut_padding).predict(files)
    conf = float(max(d.scores[100] for d in full))
    results = {k: Predictor(models[k], conf=conf, threads=1, cut_padding=cut_padding).predict(files)
               for k in ("pt", "onnx", "xml")}
    for dets, img in zip(results["pt"], files):
        h, w = read_image(img).shape[:2]
        assert 5 <= len(dets) <= 101 and (dets.scores >= conf).all() and (np.diff(dets.scores) <= 0).all()
        assert (dets.boxes >= 0).all() and (dets.boxes[:, [0, 2]] <= w).all() and (dets.boxes[:, [1, 3]] <= h).all()
    _same(results["pt"], results["onnx"], conf)
    _same(results["pt"], results["xml"], conf)


def test_from_model_equals_checkpoint_and_stored_thresholds(models, files):
    class_conf = np.asarray(models["class_conf"], np.float32)
    from_file = Predictor(models["pt"], threads=1)  # conf=None: the checkpoint's per-class thresholds
    np.testing.assert_allclose(from_file.conf, class_conf)
    np.testing.assert_allclose(Predictor(models["onnx"], threads=1).conf, class_conf)
    in_memory = Predictor.from_model(models["model"], NAMES, imgsz=IMGSZ, resize_mode="letterbox",
                                     conf=models["class_conf"], device="cpu")
    a, b = from_file.predict(files), in_memory.predict([read_image(f) for f in files])
    kept = sum(len(d) for d in a)
    assert 3 * 15 <= kept <= 3 * 16 + 3  # the per-class cut leaves each class its 15-16 best
    for da, db in zip(a, b):
        assert (da.scores >= class_conf[da.labels]).all()
        np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-3)
        np.testing.assert_allclose(da.scores, db.scores, atol=1e-6)


def test_letterbox_geometry_by_hand():
    img = np.zeros((480, 640, 3), np.uint8)
    square, place = fit_image(img, IMGSZ, "letterbox")
    assert square.shape == (160, 160, 3) and place == Placement((0.25, 0.25), (0.0, 20.0), (640, 480))
    cut, place = cut_padding_letterbox(img, IMGSZ, 32)  # 640x480 -> 160x120 -> padded to 160x128
    assert cut.shape == (128, 160, 3) and place.pad == (0, 4) and (cut[:4] == 114).all() and (cut[4:124] == 0).all()
    boxes = boxes_to_original(np.array([[10, 14, 50, 54], [-5, 0, 170, 130]], np.float32), place)
    np.testing.assert_allclose(boxes, [[40, 40, 200, 200], [0, 0, 640, 480]])  # second one clipped
    stretched, place = fit_image(np.zeros((100, 200, 3), np.uint8), 64, "stretch")
    assert stretched.shape == (64, 64, 3) and place.scale == (0.32, 0.64) and place.pad == (0.0, 0.0)


def test_static_export_refuses_what_it_cannot_run(models, files, tmp_path):
    static = export_model(models["model"], NAMES, "onnx", tmp_path / "static", imgsz=128, resize_mode="letterbox")
    assert len(Predictor(static, conf=0.3, threads=1).predict(files[:2])) == 2
    with pytest.raises(ValueError, match="exported for 128x128 input; imgsz=160 needs an export with dynamic=true"):
        Predictor(static, imgsz=160)
    with pytest.raises(ValueError, match="cut_padding=true needs free input height/width"):
        Predictor(static, cut_padding=True)


def test_bad_inputs_are_named(models, tmp_path):
    p = Predictor(models["onnx"], threads=1)
    with pytest.raises(ValueError, match=r"image 0: expected an RGB array \[H, W, 3\]"):
        p.predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="3 per-class values"):
        p.predict(np.zeros((10, 10, 3), np.uint8), conf=[0.1, 0.2])
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        p.predict(tmp_path / "nothing_here.jpg")
    with pytest.raises(ValueError, match="unknown model file type '.bin'"):
        Predictor(tmp_path.joinpath("m.bin").touch() or tmp_path / "m.bin")
    stretch_model = Predictor.from_model(models["model"], NAMES, imgsz=IMGSZ, device="cpu")
    with pytest.raises(ValueError, match="cut_padding=true needs a letterbox model"):
        Predictor.from_model(models["model"], NAMES, imgsz=IMGSZ, device="cpu", cut_padding=True)
    assert stretch_model.predict(np.full((20, 30, 3), 200, np.uint8))[0].boxes.shape[1] == 4


def test_sources(tmp_path, files):
    for f in files[:2]:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in expand_paths(tmp_path)] == [f.name for f in files[:2]]
    assert len(expand_paths(str(tmp_path / "*.jpg"))) == 2
    with pytest.raises(FileNotFoundError, match="matches no image"):
        expand_paths(str(tmp_path / "*.png"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_paths(tmp_path / "missing")


def test_draw_marks_the_box_in_its_class_colour():
    img = np.zeros((100, 100, 3), np.uint8)
    out = draw_detections(img, Detections([[20, 30, 80, 90]], [0.9], [1]), NAMES, line_width=2)
    assert tuple(out[60, 20]) == class_color(1) and tuple(out[60, 50]) == (0, 0, 0)  # edge drawn, inside untouched
    assert (img == 0).all()  # the input is not modified


def test_predict_command_writes_images_labels_json(models, files, tmp_path):
    from detforge.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for f in files[:2]:
        shutil.copy(f, src / f.name)
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    code = main(["predict", f"model={models['onnx']}", f"source={src}", "conf=0.3", "save_txt=true",
                 "save_json=true", f"save_dir={out}", "threads=1"])
    assert code == 0
    dets = Predictor(models["onnx"], conf=0.3, threads=1).predict([src / f.name for f in files[:2]])
    rows = json.loads((out / "predictions.json").read_text())
    assert len(rows) == sum(len(d) for d in dets)
    for f, d in zip(files[:2], dets):
        drawn = cv2.imread(str(out / f.name))
        assert drawn is not None and drawn.shape[:2] == read_image(f).shape[:2]
        lines = (out / "labels" / f"{f.stem}.txt").read_text().splitlines()
        assert len(lines) == len(d)
        h, w = drawn.shape[:2]
        first = [float(v) for v in lines[0].split()]
        x1, y1, x2, y2 = d.boxes[0]
        np.testing.assert_allclose(first, [d.labels[0], (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w,
                                           (y2 - y1) / h, d.scores[0]], atol=2e-5)
        mine = [r for r in rows if r["image_id"] == f.stem]
        assert len(mine) == len(d) and mine[0]["category_name"] == NAMES[d.labels[0]]
        np.testing.assert_allclose(mine[0]["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=2e-3)
    assert not (out / "broken.jpg").exists()  # reported and skipped, the others still done


def test_predict_command_on_video(models, files, tmp_path):
    from detforge.cli import main

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (320, 240))
    for f in files:
        writer.write(cv2.resize(cv2.imread(str(f)), (320, 240)))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", f"model={models['pt']}", f"source={video}", "save_txt=true", f"save_dir={out}"]) == 0
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 320
    cap.release()
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"clip_{i:06d}.txt" for i in range(3)]


def test_predict_command_equals_the_models_own_forward_with_hand_geometry(models, files, tmp_path):
    """An independent path: the letterbox worked by hand (640x480 -> 160: scale 1/4, 20 px of
    padding above and below), the model's own forward + postprocess, boxes mapped back by hand;
    `detforge predict` on the .pt must write the same boxes."""
    import torch

    from detforge.cli import main

    img = read_image(files[0])
    assert img.shape[:2] == (480, 640)
    canvas = np.full((IMGSZ, IMGSZ, 3), 114, np.uint8)
    canvas[20:140] = cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA)
    model = models["model"].eval()
    with torch.no_grad():
        x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255
        res = model.postprocess(model(x), (IMGSZ, IMGSZ), max_det=300)[0]
    keep = res["scores"].numpy() >= 0.3
    boxes = (res["boxes"].numpy()[keep] - np.array([0, 20, 0, 20])) / 0.25
    boxes = np.clip(boxes, 0, [640, 480, 640, 480])
    expected = np.concatenate([res["labels"].numpy()[keep, None], boxes, res["scores"].numpy()[keep, None]], 1)

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(files[0], src / files[0].name)
    assert main(["predict", f"model={models['pt']}", f"source={src}", "conf=0.3", "save_txt=true", "save=false",
                 f"save_dir={tmp_path / 'out'}"]) == 0
    rows = np.loadtxt(tmp_path / "out" / "labels" / f"{files[0].stem}.txt", ndmin=2)
    cx, cy, w, h = rows[:, 1] * 640, rows[:, 2] * 480, rows[:, 3] * 640, rows[:, 4] * 480
    got = np.stack([rows[:, 0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, rows[:, 5]], 1)
    assert len(expected) > 5 and got.shape == expected.shape
    # pair rows by label and nearest box (scores may tie, so no order is canonical)
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(expected[:, None, 1:5] - got[None, :, 1:5]).sum(-1) + 1e6 * (expected[:, None, 0] != got[None, :, 0])
    rows_e, rows_g = linear_sum_assignment(cost)
    np.testing.assert_allclose(got[rows_g], expected[rows_e], atol=0.05)
