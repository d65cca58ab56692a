"""COCO crowd regions (``iscrowd=1``) are ignore regions everywhere detforge scores: the
fixed-threshold rules (hand-worked case), the COCO mAP of ``detforge eval`` (equal to
pycocotools to 1e-9 on a file with crowd regions, detections on them, three categories and
objects of every size), and validation from a COCO-format dataset folder."""

from __future__ import annotations

import contextlib
import io
import json

import cv2
import numpy as np
import pytest
import torch

from detforge.eval.eval_files import evaluate_files
from detforge.eval.evaluator import Evaluator
from detforge.eval.threshold import confidence_sweep, intersection_over_first, match_image, threshold_metrics
from detforge.records import Detections

SUMMARY = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large")
A, B = 0, 1


# ---- the fixed-threshold rule, by hand ------------------------------------------------------------
def test_intersection_over_prediction_area():
    crowd = [[0, 0, 100, 100]]
    preds = [[50, 50, 150, 150], [60, 0, 160, 100], [0, 0, 80, 120], [5, 5, 5, 9]]
    np.testing.assert_allclose(intersection_over_first(np.array(preds, float), np.array(crowd, float))[:, 0],
                               [2500 / 10000, 4000 / 10000, 8000 / 9600, 0.0])


def hand_image():
    """GT A [0,0,10,10] and A [40,40,60,60] (inside the crowd region), crowd region A
    [20,0,120,100]. Predictions, by score:
      p1 0.95 A [40,40,60,60]   TP on GT 2 (real GTs are matched before crowd regions)
      p2 0.90 A [0,0,10,10]     TP on GT 1
      p3 0.80 A [30,10,60,40]   inside the crowd region (1.0 > 0.5): ignored
      p4 0.70 A [0,0,10,11]     GT 1 taken, no crowd overlap: FP (duplicate)
      p5 0.60 B [30,10,60,40]   the crowd region is A's: FP of B
      p6 0.50 A [100,0,140,40]  800 / 1600 = 0.5 of it on the crowd region, not above 0.5: FP
      p7 0.40 A [0,0,80,120]    6000 / 9600 = 0.625 on the crowd region: ignored
      p8 0.30 A [41,40,60,60]   GT 2 taken, 1.0 on the crowd region: ignored
    """
    gt = np.array([[0, 0, 10, 10], [40, 40, 60, 60]], float), np.array([A, A])
    crowd = np.array([[20, 0, 120, 100]], float), np.array([A])
    boxes = np.array([[40, 40, 60, 60], [0, 0, 10, 10], [30, 10, 60, 40], [0, 0, 10, 11], [30, 10, 60, 40],
                      [100, 0, 140, 40], [0, 0, 80, 120], [41, 40, 60, 60]], float)
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    labels = np.array([A, A, A, A, B, A, A, A])
    return gt, crowd, (boxes, scores, labels)


def test_hand_worked_crowd_case():
    (gb, gl), (cb, cl), (pb, ps, pl) = hand_image()
    m = match_image(gb, gl, pb, ps, pl, conf=0.0, iou_thr=0.5, crowd_boxes=cb, crowd_labels=cl)
    assert m.matched_gt.tolist() == [1, 0, -1, -1, -1, -1, -1, -1]
    assert m.ignored.tolist() == [False, False, True, False, False, False, True, True]
    t = threshold_metrics([m], ["A", "B"])
    assert (t["tp"], t["fp"], t["fn"]) == (2, 3, 0)
    assert [(r["tp"], r["fp"], r["fn"]) for r in t["per_class"]] == [(2, 2, 0), (0, 1, 0)]
    assert t["precision"] == pytest.approx(2 / 5) and t["recall"] == 1.0
    # ignored predictions appear nowhere in the confusion matrix: A row 2 TPs, background row 2 A + 1 B
    assert t["confusion"] == [[2, 0, 0], [0, 0, 0], [2, 1, 0]]
    # without the crowd region the three ignored predictions are FPs
    plain = threshold_metrics([match_image(gb, gl, pb, ps, pl, conf=0.0, iou_thr=0.5)], ["A", "B"])
    assert (plain["tp"], plain["fp"], plain["fn"]) == (2, 6, 0)
    # at conf 0.65: p1, p2 TP, p3 ignored, p4 FP
    m65 = match_image(gb, gl, pb, ps, pl, conf=0.65, iou_thr=0.5, crowd_boxes=cb, crowd_labels=cl)
    assert threshold_metrics([m65], ["A", "B"])["fp"] == 1


def test_sweep_with_crowd_regions_equals_direct_matching():
    (gb, gl), (cb, cl), (pb, ps, pl) = hand_image()
    confs = np.array([0.0, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.92, 1.0])
    full = match_image(gb, gl, pb, ps, pl, conf=0.0, crowd_boxes=cb, crowd_labels=cl)
    sweep = confidence_sweep([full], 2, confs)
    for i, conf in enumerate(confs):
        direct = threshold_metrics([match_image(gb, gl, pb, ps, pl, conf=conf, crowd_boxes=cb, crowd_labels=cl)],
                                   ["A", "B"])
        for c, row in enumerate(direct["per_class"]):
            assert (sweep["tp"][i, c], sweep["fp"][i, c], sweep["fn"][i, c]) == (row["tp"], row["fp"], row["fn"])


def test_evaluator_takes_crowd_regions():
    (gb, gl), (cb, cl), (pb, ps, pl) = hand_image()
    ev = Evaluator(["A", "B"], conf=0.0)
    ev.add(gb, gl, Detections(pb, ps, pl), (200, 200), crowd_boxes=cb, crowd_labels=cl)
    m = ev.compute()
    assert (m["tp"], m["fp"], m["fn"]) == (2, 3, 0)
    # COCO: for A, ranked TP TP FP FP (the ignored ones drop out) -> AP 1 at every IoU up to 0.95
    assert m["per_class"][0]["ap50_95"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="crowd region"):
        ev.add(gb, gl, Detections(pb, ps, pl), (200, 200), crowd_boxes=cb, crowd_labels=[5])


# ---- COCO mAP against pycocotools on a crowd file -------------------------------------------------
CAT_IDS = (7, 3, 12)


def _q(v):
    """Quarter pixels: exact in float32, so detforge's float32 boxes equal the file's."""
    return (np.round(np.asarray(v, float) * 4) / 4).tolist()


def crowd_file(rng, images: list[dict]) -> tuple[list[dict], list[dict]]:
    """(annotations, predictions): objects of every size, crowd regions in most images with
    real objects inside some of them, and predictions on objects, on crowd regions (same and
    other class, inside and half over the edge) and on the background."""
    anns, preds = [], []

    def ann(img, cat, box, crowd):
        anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": box,
                     "area": round(box[2] * box[3] * (1.0 if crowd else 0.8), 2), "iscrowd": int(crowd)})

    def pred(img, cat, box):
        # inside the image, as a detector's boxes mapped back to the image are
        x1, y1 = max(box[0], 0.0), max(box[1], 0.0)
        x2, y2 = min(box[0] + box[2], img["width"]), min(box[1] + box[3], img["height"])
        if x2 > x1 and y2 > y1:
            preds.append({"image_id": img["id"], "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                          "score": round(float(rng.uniform(0.01, 1)), 4)})

    for img in images:
        W, H = img["width"], img["height"]
        for _ in range(int(rng.integers(0, 3))):  # crowd regions
            w, h = _q(rng.uniform(80, 260, 2))
            x, y = _q([rng.uniform(0, W - w), rng.uniform(0, H - h)])
            cat = int(rng.choice(CAT_IDS))
            ann(img, cat, [x, y, w, h], True)
            if rng.uniform() < 0.5:  # a real object inside the crowd region
                ann(img, cat, _q([x + w / 4, y + h / 4, w / 3, h / 3]), False)
            for _ in range(int(rng.integers(2, 6))):  # predictions inside / over the edge of it
                pw, ph = _q(rng.uniform(6, 0.6 * w, 2))
                px, py = _q([rng.uniform(x - pw / 2, x + w - pw / 2), rng.uniform(y - ph / 2, y + h - ph / 2)])
                other = int(rng.choice([c for c in CAT_IDS if c != cat]))
                pred(img, cat if rng.uniform() < 0.75 else other, [px, py, pw, ph])
        for _ in range(int(rng.integers(1, 7))):  # objects of every size: 6..300 px
            w, h = _q(np.exp(rng.uniform(np.log(6), np.log(300), 2)))
            x, y = _q([rng.uniform(0, W - w), rng.uniform(0, H - h)])
            ann(img, int(rng.choice(CAT_IDS)), [x, y, w, h], False)
        for a in [a for a in anns if a["image_id"] == img["id"] and not a["iscrowd"]]:
            x, y, w, h = a["bbox"]
            for _ in range(int(rng.integers(0, 3)) + (rng.uniform() < 0.8)):
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                cat = a["category_id"] if rng.uniform() < 0.85 else int(rng.choice(CAT_IDS))
                pred(img, cat, _q([x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)]))
        for _ in range(int(rng.integers(0, 3))):  # background
            pred(img, int(rng.choice(CAT_IDS)), _q([rng.uniform(0, W - 60), rng.uniform(0, H - 60),
                                                    rng.uniform(8, 60), rng.uniform(8, 60)]))
    return anns, preds


def pycocotools_stats(gt_path, pred_path) -> np.ndarray:
    pytest.importorskip("pycocotools", reason="pycocotools is the test-time reference (test extra)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(pred_path)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.maximum(np.asarray(ev.stats[:6]), 0.0)


def write_crowd_file(tmp_path, seed=3, n=16, size=(640, 480)):
    rng = np.random.default_rng(seed)
    images = [{"id": 200 + i, "file_name": f"{i}.png", "width": size[0], "height": size[1]} for i in range(n)]
    anns, preds = crowd_file(rng, images)
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in CAT_IDS]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path / "gt.json", tmp_path / "pred.json", gt, preds


def test_eval_with_crowd_regions_equals_pycocotools(tmp_path):
    gt_path, pred_path, gt, preds = write_crowd_file(tmp_path)
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    sizes = [a["area"] for a in gt["annotations"] if not a["iscrowd"]]
    assert len(crowd) >= 10 and min(sizes) < 32**2 and max(sizes) > 96**2
    ref = pycocotools_stats(gt_path, pred_path)
    m = evaluate_files(gt_path, pred_path, save_dir=tmp_path / "out")
    got = np.array([m[k] for k in SUMMARY])
    assert np.abs(got - ref).max() < 1e-9, dict(zip(SUMMARY, zip(got.tolist(), ref.tolist())))
    assert m["crowd_regions"] == len(crowd)
    # the crowd regions matter: read as ordinary objects the numbers differ
    plain = json.loads(gt_path.read_text())
    plain["annotations"] = [{**a, "iscrowd": 0} for a in plain["annotations"]]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    m_plain = evaluate_files(tmp_path / "plain.json", pred_path, save_dir=tmp_path / "out2")
    assert abs(m_plain["map50_95"] - m["map50_95"]) > 0.01
    assert m_plain["fp"] + m_plain["tp"] > m["fp"] + m["tp"]  # predictions on crowd regions were ignored


# ---- validation from a COCO-format dataset folder -------------------------------------------------
class LookupDetector(torch.nn.Module):
    """A test double for a detector: each input image is one flat colour that names the image,
    and its 'predictions' are looked up from a table (input pixels = original pixels here)."""

    stride = 32

    def __init__(self, table: dict[int, Detections]) -> None:
        super().__init__()
        self.table = table

    def forward(self, x):
        return x

    def postprocess(self, raw, input_hw, max_det=300):
        out = []
        for img in raw:
            d = self.table[int(round(float(img[0, 0, 0]) * 255)) // 8]
            out.append({"boxes": torch.from_numpy(d.boxes), "scores": torch.from_numpy(d.scores),
                        "labels": torch.from_numpy(d.labels)})
        return out


def test_validation_on_a_coco_folder_uses_crowd_regions(tmp_path):
    from detforge.config import TrainConfig
    from detforge.data.dataset import DetectionDataset
    from detforge.data.formats import load_dataset
    from detforge.data.loader import build_dataloader
    from detforge.engine.validator import evaluate

    gt_path, pred_path, gt, preds = write_crowd_file(tmp_path, seed=5, n=10, size=(320, 320))
    (tmp_path / "data" / "annotations").mkdir(parents=True)
    (tmp_path / "data" / "images" / "val").mkdir(parents=True)
    for i, img in enumerate(gt["images"]):
        flat = np.full((320, 320, 3), 8 * i, np.uint8)  # the colour names the image (LookupDetector)
        cv2.imwrite(str(tmp_path / "data" / "images" / "val" / img["file_name"]), flat)
    (tmp_path / "data" / "annotations" / "instances_val.json").write_text(gt_path.read_text())
    data = load_dataset(tmp_path / "data")
    samples = data.splits["val"]
    assert sum(len(s.crowd_labels) for s in samples) == sum(a["iscrowd"] for a in gt["annotations"])
    cat_index = {c: i for i, c in enumerate(sorted(CAT_IDS))}
    table = {}
    for s in samples:
        rows = sorted((p for p in preds if p["image_id"] == s.image_id), key=lambda p: -p["score"])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (p["bbox"] for p in rows)], np.float32)
        table[int(s.image_path.stem)] = Detections(boxes.reshape(-1, 4), [p["score"] for p in rows],
                                                   [cat_index[p["category_id"]] for p in rows])
    cfg = TrainConfig(imgsz=320, resize_mode="stretch")
    loader = build_dataloader(DetectionDataset(samples, cfg, train=False), 4, train=False, workers=0, seed=0)
    metrics, _, _ = evaluate(LookupDetector(table), loader, data.names, 0.5, 0.5, torch.device("cpu"), show=False)
    files = evaluate_files(gt_path, pred_path, conf=0.5, save_dir=tmp_path / "out")
    # the file's areas (0.8 of the box) are not in the dataset, so compare what areas do not decide
    for key in ("map50_95", "map50", "map75", "precision", "recall", "f1", "tp", "fp", "fn"):
        assert metrics[key] == pytest.approx(files[key], abs=1e-9), key
    assert metrics["map50_95"] > 0.1
    # and they came from the samples' crowd regions: without them validation scores lower
    for s in samples:
        s.crowd_boxes, s.crowd_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    without, _, _ = evaluate(LookupDetector(table), loader, data.names, 0.5, 0.5, torch.device("cpu"), show=False)
    assert without["fp"] > metrics["fp"] and without["map50_95"] < metrics["map50_95"] - 0.01


def test_bccd_as_coco_with_crowd_regions_equals_pycocotools(bccd_root, tmp_path):
    """Real boxes: BCCD converted to COCO, where three overlapping red cells of an image become
    one crowd region (their union) in every other image; detections are the original boxes,
    jittered, so those on the crowd regions must be ignored as pycocotools ignores them."""
    from detforge.data.formats import convert_dataset

    out = convert_dataset(bccd_root, "coco", tmp_path / "coco", link=True)
    doc = json.loads((out / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(0)
    red = next(c["id"] for c in doc["categories"] if c["name"] == "RBC")
    by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    anns, preds = [], []
    for image_id, rows in sorted(by_image.items()):
        rbc = [a for a in rows if a["category_id"] == red]
        grouped = []
        if image_id % 2 == 0 and len(rbc) >= 3:
            seed = rbc[int(rng.integers(len(rbc)))]
            sx, sy = seed["bbox"][0] + seed["bbox"][2] / 2, seed["bbox"][1] + seed["bbox"][3] / 2
            grouped = sorted(rbc, key=lambda a: (a["bbox"][0] + a["bbox"][2] / 2 - sx) ** 2
                             + (a["bbox"][1] + a["bbox"][3] / 2 - sy) ** 2)[:3]
            x1 = min(a["bbox"][0] for a in grouped)
            y1 = min(a["bbox"][1] for a in grouped)
            x2 = max(a["bbox"][0] + a["bbox"][2] for a in grouped)
            y2 = max(a["bbox"][1] + a["bbox"][3] for a in grouped)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": red,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 1})
        for a in rows:
            if not any(a is g for g in grouped):
                anns.append({**a, "id": len(anns) + 1})
            x, y, w, h = a["bbox"]
            for _ in range(int(rng.integers(1, 3))):
                j = rng.normal(0, 0.1, 4) * [w, h, w, h]
                cat = a["category_id"] if rng.uniform() < 0.9 else int(rng.integers(1, 4))
                px, py = max(x + j[0], 0), max(y + j[1], 0)
                box = _q([px, py, max(w + j[2], 2), max(h + j[3], 2)])
                preds.append({"image_id": image_id, "category_id": cat, "bbox": box,
                              "score": round(float(rng.uniform(0.01, 1)), 4)})
    doc["annotations"] = anns
    n_crowd = sum(a["iscrowd"] for a in anns)
    assert n_crowd >= 20
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    ref = pycocotools_stats(tmp_path / "gt.json", tmp_path / "pred.json")
    m = evaluate_files(tmp_path / "gt.json", tmp_path / "pred.json", save_dir=tmp_path / "out")
    got = np.array([m[k] for k in SUMMARY])
    assert np.abs(got - ref).max() < 1e-9, dict(zip(SUMMARY, zip(got.tolist(), ref.tolist())))
    assert m["crowd_regions"] == n_crowd
