"""COCO mAP through faster-coco-eval against hand-worked cases and pycocotools, and
``evaluate_files`` (the ``detforge eval`` command)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging

import numpy as np
import pytest

from detforge.eval.coco import coco_map, to_coco
from detforge.eval.eval_files import evaluate_files, increment_dir
from detforge.records import Detections


def pycocotools_api():
    """pycocotools (the test-time reference); only the parity tests need it."""
    pytest.importorskip("pycocotools", reason="pycocotools is the test-time reference (test extra)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def det(boxes, scores, labels):
    return Detections(np.array(boxes, float).reshape(-1, 4), scores, labels)


def gt(boxes, labels):
    return np.array(boxes, float).reshape(-1, 4), np.array(labels, int)


def reference(gt_dict: dict, results: list) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' stats and precision array for the same inputs."""
    RefCOCO, RefCOCOeval = pycocotools_api()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = RefCOCO()
        coco_gt.dataset = copy.deepcopy(gt_dict)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = RefCOCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), np.asarray(ev.eval["precision"])


def ref_class_ap(precision: np.ndarray, k: int, iou_index=None) -> float:
    p = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
    p = p[p > -1]
    return float(p.mean()) if p.size else 0.0


def test_hand_case_iou_between_thresholds():
    # GT 10x10 (small); prediction 10x7.2: IoU 0.72, a TP at IoU thresholds 0.50..0.70 (5 of 10)
    m = coco_map([gt([[0, 0, 10, 10]], [0])], [det([[0, 0, 10, 7.2]], [0.9], [0])], 2, [(50, 50)])
    assert m["map50"] == pytest.approx(1.0, abs=1e-12)
    assert m["map75"] == 0.0
    assert m["map50_95"] == pytest.approx(0.5, abs=1e-12)
    assert m["map_small"] == pytest.approx(0.5, abs=1e-12)
    assert m["map_medium"] == 0.0 and m["map_large"] == 0.0  # absent: reported as 0.0
    assert m["per_class_ap50_95"] == pytest.approx([0.5, 0.0])
    assert m["per_class_ap50"] == pytest.approx([1.0, 0.0])


def test_hand_case_half_recall():
    # 2 GTs; a TP (0.9) then a FP (0.8) elsewhere; second GT missed: precision 1 up to recall
    # 0.5 -> 51 of COCO's 101 recall points -> AP = 51/101 at every IoU threshold
    m = coco_map(
        [gt([[0, 0, 40, 40], [100, 100, 140, 140]], [0, 0])],
        [det([[0, 0, 40, 40], [200, 0, 240, 40]], [0.9, 0.8], [0, 0])],
        1,
        [(300, 300)],
    )
    for key in ("map50_95", "map50", "map75", "map_medium"):
        assert m[key] == pytest.approx(51 / 101, abs=1e-12)


def test_empty_predictions_and_empty_ground_truth():
    m = coco_map([gt([[0, 0, 10, 10]], [0]), gt([], [])], [Detections.empty(), Detections.empty()], 1,
                 [(20, 20), (20, 20)])
    assert all(m[k] == 0.0 for k in ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large"))
    m = coco_map([gt([], [])], [det([[0, 0, 5, 5]], [0.9], [0])], 2, [(20, 20)])
    assert m["map50_95"] == 0.0 and m["per_class_ap50"] == [0.0, 0.0]


def test_to_coco_conventions():
    gt_dict, results = to_coco([gt([[1, 2, 11, 7]], [1])], [det([[0, 0, 4, 2]], [0.5], [0])], 2, [(30, 40)])
    assert gt_dict["images"] == [{"id": 1, "width": 40, "height": 30}]
    assert gt_dict["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 10.0, 5.0], "area": 50.0, "iscrowd": 0}
    ]
    assert [c["id"] for c in gt_dict["categories"]] == [1, 2]
    assert results == [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 2.0], "score": 0.5}]
    with pytest.raises(ValueError, match="class ids must lie in 0..1"):
        to_coco([gt([[0, 0, 1, 1]], [2])], [Detections.empty()], 2, [(5, 5)])


def random_set(seed: int, n_images: int = 20, k: int = 3):
    """Seeded images with GT of all sizes, noisy/duplicated/relabelled predictions, images
    without GT and images without predictions."""
    rng = np.random.default_rng(seed)
    gts, dets, sizes = [], [], []
    for i in range(n_images):
        n = 0 if i % 7 == 3 else int(rng.integers(1, 8))
        xy = rng.uniform(0, 400, (n, 2))
        wh = np.exp(rng.uniform(np.log(6), np.log(250), (n, 2)))
        boxes = np.round(np.concatenate([xy, xy + wh], 1) * 4) / 4
        labels = rng.integers(0, k, n)
        gts.append((boxes, labels))
        if i % 5 == 4:
            dets.append(Detections.empty())
        else:
            src = rng.integers(0, max(n, 1), int(rng.integers(0, 2 * n + 1))) if n else np.zeros(0, int)
            pb = boxes[src] + rng.normal(0, 0.05, (len(src), 4)) * np.tile(wh[src], 2) if n else np.zeros((0, 4))
            pl = np.where(rng.uniform(size=len(src)) < 0.85, labels[src] if n else src, rng.integers(0, k, len(src)))
            fxy = rng.uniform(0, 400, (3, 2))
            pb = np.concatenate([pb, np.concatenate([fxy, fxy + 30], 1)])
            pl = np.concatenate([pl, rng.integers(0, k, 3)])
            scores = rng.uniform(0.01, 1.0, len(pl))
            dets.append(Detections(pb, scores, pl))
        sizes.append((480, 640))
    return gts, dets, sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_on_random_set(seed):
    gts, dets, sizes = random_set(seed)
    m = coco_map(gts, dets, 3, sizes)
    stats, precision = reference(*to_coco(gts, dets, 3, sizes))
    keys = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large")
    for key, ref in zip(keys, stats[:6]):
        assert abs(m[key] - max(ref, 0.0)) < 1e-9, key
    assert 0.05 < m["map50_95"] < 0.95  # the set is neither trivial nor hopeless
    for k in range(3):
        assert abs(m["per_class_ap50_95"][k] - ref_class_ap(precision, k)) < 1e-9
        assert abs(m["per_class_ap50"][k] - ref_class_ap(precision, k, 0)) < 1e-9


# ---- evaluate_files -------------------------------------------------------------------------
def write_gt(path, images, annotations, categories):
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def coco_gt_json(tmp_path, seed=0, cat_ids=(7, 3, 12)):
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(12)]
    anns = []
    for img in images:
        for _ in range(int(rng.integers(0, 6))):
            x, y = (np.round(rng.uniform(0, 400, 2) * 4) / 4).tolist()
            w, h = (np.round(np.exp(rng.uniform(np.log(8), np.log(200), 2)) * 4) / 4).tolist()
            # a segmentation-style area smaller than the box decides small/medium/large
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.choice(cat_ids)),
                         "bbox": [x, y, w, h], "area": round(0.75 * w * h, 2), "iscrowd": 0})
    cats = [{"id": c, "name": f"cls{c}"} for c in cat_ids]
    return write_gt(tmp_path / "gt.json", images, anns, cats), anns


def test_predictions_equal_to_gt_score_perfectly(tmp_path):
    gt_path, anns = coco_gt_json(tmp_path)
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in anns]
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    m = evaluate_files(gt_path, tmp_path / "pred.json", save_dir=tmp_path / "out")
    assert m["map50_95"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["iou"] == pytest.approx(1.0)
    assert (m["tp"], m["fp"], m["fn"]) == (len(anns), 0, 0)
    # classes are the gt categories sorted by id
    assert [r["class"] for r in m["per_class"]] == ["cls3", "cls7", "cls12"]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("map50_95", "map50", "map75", "precision", "recall", "f1", "iou", "per_class", "confusion"):
        assert saved[key] == m[key]
    for name in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_shifted_prediction_known_numbers(tmp_path):
    gt_path = write_gt(tmp_path / "gt.json", [{"id": 1, "width": 300, "height": 300}],
                       [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 100, 100], "area": 10000,
                         "iscrowd": 0}], [{"id": 5, "name": "cell"}])
    # shifted 20 px right: IoU 8000 / 12000 = 2/3 -> TP at 0.50, 0.55, 0.60, 0.65 (4 of 10)
    (tmp_path / "pred.json").write_text(json.dumps(
        [{"image_id": 1, "category_id": 5, "bbox": [20, 0, 100, 100], "score": 0.8}]))
    m = evaluate_files(gt_path, tmp_path / "pred.json", save_dir=tmp_path / "out")
    assert m["map50"] == pytest.approx(1.0)
    assert m["map50_95"] == pytest.approx(0.4)
    assert m["map75"] == 0.0
    assert m["map_large"] == pytest.approx(0.4)  # area 10000 > 96^2
    assert m["iou"] == pytest.approx(2 / 3)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    m = evaluate_files(gt_path, tmp_path / "pred.json", conf=0.9, save_dir=tmp_path / "out2")
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 1)  # below conf
    m = evaluate_files(gt_path, tmp_path / "pred.json", iou_thr=0.7, save_dir=tmp_path / "out3")
    assert (m["tp"], m["fp"], m["fn"]) == (0, 1, 1)  # IoU 2/3 does not exceed 0.7


def test_evaluate_files_matches_pycocotools(tmp_path):
    gt_path, anns = coco_gt_json(tmp_path, seed=4)
    rng = np.random.default_rng(9)
    preds = []
    for a in anns:
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = a["bbox"]
            jitter = (np.round(rng.normal(0, 0.1, 4) * [w, h, w, h] * 4) / 4).tolist()
            cat = a["category_id"] if rng.uniform() < 0.85 else 3
            preds.append({"image_id": a["image_id"], "category_id": cat,
                          "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)],
                          "score": round(float(rng.uniform(0.05, 1)), 4)})
    preds.append({"image_id": 100, "category_id": 12, "bbox": [5, 5, 40, 40], "score": 0.7})
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    m = evaluate_files(gt_path, tmp_path / "pred.json", save_dir=tmp_path / "out")
    RefCOCO, RefCOCOeval = pycocotools_api()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = RefCOCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(tmp_path / "pred.json"))
        ev = RefCOCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    keys = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large")
    for key, ref in zip(keys, ev.stats[:6]):
        assert abs(m[key] - max(ref, 0.0)) < 1e-9, key
    for k, row in enumerate(m["per_class"]):  # categories 3, 7, 12 in id order, as pycocotools
        assert abs(row["ap50_95"] - ref_class_ap(np.asarray(ev.eval["precision"]), k)) < 1e-9


def test_unknown_ids_are_counted_and_left_out(tmp_path, caplog):
    gt_path = write_gt(tmp_path / "gt.json", [{"id": 1, "width": 100, "height": 100}],
                       [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50], "area": 2500},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "area": 900,
                         "iscrowd": 1}],
                       [{"id": 2, "name": "cat"}])
    preds = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.9},
             {"image_id": 99, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.9},
             {"image_id": 1, "category_id": 8, "bbox": [0, 0, 50, 50], "score": 0.9},
             {"image_id": 1, "category_id": 8, "bbox": [0, 0, 50, 50], "score": 0.9}]
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(preds))
    with caplog.at_level(logging.WARNING):
        m = evaluate_files(gt_path, pred_path, save_dir=tmp_path / "out")
    assert m["left_out"] == {"unknown_image_id": 1, "unknown_category_id": 2}
    assert m["crowd_regions"] == 1  # an ignore region, not a left-out annotation
    assert str(pred_path) in caplog.text and "left out 1 predictions" in caplog.text
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 0)
    assert m["map50"] == pytest.approx(1.0)


def test_bad_files_name_the_file_and_problem(tmp_path):
    gt_path = write_gt(tmp_path / "gt.json", [{"id": 1}], [], [{"id": 1, "name": "a"}])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        evaluate_files(gt_path, bad, save_dir=tmp_path / "o")
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match=r"bad\.json: entry 0 lacks \['score'\]"):
        evaluate_files(gt_path, bad, save_dir=tmp_path / "o")
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}]))
    with pytest.raises(ValueError, match=r"bad\.json: entry 0: bbox must be"):
        evaluate_files(gt_path, bad, save_dir=tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_files(tmp_path / "missing.json", bad, save_dir=tmp_path / "o")
    no_cats = write_gt(tmp_path / "nocats.json", [{"id": 1}], [], [])
    with pytest.raises(ValueError, match=r"nocats\.json: no categories"):
        evaluate_files(no_cats, bad, save_dir=tmp_path / "o")


def test_increment_dir_and_default_save_dir(tmp_path, monkeypatch):
    base = tmp_path / "runs" / "eval" / "eval"
    assert increment_dir(base) == base
    assert increment_dir(base) == base.with_name("eval2")
    assert increment_dir(base) == base.with_name("eval3")
    assert all(p.is_dir() for p in (base, base.with_name("eval2"), base.with_name("eval3")))
    monkeypatch.chdir(tmp_path)
    gt_path = write_gt(tmp_path / "gt.json", [{"id": 1, "width": 10, "height": 10}], [], [{"id": 1, "name": "a"}])
    (tmp_path / "p.json").write_text("[]")
    m = evaluate_files(gt_path, tmp_path / "p.json")
    assert m["save_dir"] == "runs/eval/eval4"
    assert (tmp_path / "runs/eval/eval4/metrics.json").is_file()
