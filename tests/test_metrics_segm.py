"""COCO mask mAP (iouType "segm") beside the box mAP: equal to pycocotools on a COCO file with
polygon and RLE ground truth (crowd regions included) and RLE / polygon predictions, through
``detforge eval`` and through the Evaluator fed from records as validation does."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import faster_coco_eval.core.mask as coco_mask
import numpy as np
import pytest

from detforge.eval.coco import SEGM_KEYS, SUMMARY_KEYS, encode_masks, outline_segmentation
from detforge.eval.eval_files import evaluate_files
from detforge.eval.evaluator import Evaluator
from detforge.records import Detections

H, W = 72, 96


def _rle(mask: np.ndarray) -> dict:
    r = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def _blob(rng, h=H, w=W) -> np.ndarray:
    """A random filled polygon (12 vertices around a centre) as a flat COCO polygon."""
    c = rng.uniform([10, 10], [w - 10, h - 10])
    t = np.sort(rng.uniform(0, 2 * np.pi, 12))
    r = rng.uniform(4, 22, 12)
    pts = np.clip(np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1), 0, [w, h])
    return pts.ravel()


def coco_files(tmp_path, seed=0):
    """A COCO gt with polygon and RLE objects and crowd regions, and predictions as RLE (most)
    and polygons, made by jittering the ground truth, plus false positives."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []
    for i in range(12):
        images.append({"id": 100 + i, "file_name": f"{i}.jpg", "width": W, "height": H})
        for k in range(int(rng.integers(1, 5))):
            poly = _blob(rng)
            mask = coco_mask.decode(coco_mask.frPyObjects([poly.tolist()], H, W)[0])
            crowd = int(k == 3)
            seg = _rle(mask) if (k % 2 or crowd) else [poly.tolist()]
            bbox = coco_mask.toBbox(coco_mask.encode(np.asfortranarray(mask))).tolist()
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": [3, 7][k % 2], "bbox": bbox,
                         "area": float(mask.sum()), "iscrowd": crowd, "segmentation": seg})
            # a prediction: the object's polygon jittered, as RLE or (every third) as a polygon
            jitter = (poly.reshape(-1, 2) + rng.normal(0, 1.5, (12, 2))).clip(0, [W, H])
            pm = coco_mask.decode(coco_mask.frPyObjects([jitter.ravel().tolist()], H, W)[0])
            pseg = [jitter.ravel().tolist()] if len(preds) % 3 == 0 else _rle(pm)
            label = [3, 7][k % 2] if rng.random() > 0.15 else [7, 3][k % 2]
            preds.append({"image_id": 100 + i, "category_id": label, "segmentation": pseg,
                          "bbox": coco_mask.toBbox(coco_mask.encode(np.asfortranarray(pm))).tolist(),
                          "score": float(rng.uniform(0.3, 1))})
        for _ in range(int(rng.integers(0, 3))):  # false positives
            fp = coco_mask.decode(coco_mask.frPyObjects([_blob(rng).tolist()], H, W)[0])
            preds.append({"image_id": 100 + i, "category_id": int(rng.choice([3, 7])), "segmentation": _rle(fp),
                          "score": float(rng.uniform(0, 0.6))})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return gt, preds


def pycocotools_stats(gt: dict, preds: list, iou_type: str) -> np.ndarray:
    pytest.importorskip("pycocotools", reason="pycocotools is the test-time reference (test extra)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    preds = copy.deepcopy(preds)
    for p in preds:  # pycocotools' loadRes reads predicted masks as RLE only
        if isinstance(p["segmentation"], list):
            p["segmentation"] = coco_mask.merge(coco_mask.frPyObjects(p["segmentation"], H, W))
    if iou_type == "segm":  # mask areas decide small/medium/large (as Detectron2 evaluates)
        for p in preds:
            p.pop("bbox", None)
    else:
        preds = [p for p in preds if "bbox" in p] + [
            {**p, "bbox": coco_mask.toBbox(p["segmentation"]).tolist()} for p in preds if "bbox" not in p]
    with contextlib.redirect_stdout(io.StringIO()):
        ref = COCO()
        ref.dataset = copy.deepcopy(gt)
        ref.createIndex()
        ev = COCOeval(ref, ref.loadRes(preds), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:6])


def test_detforge_eval_segm_equals_pycocotools(tmp_path):
    gt, preds = coco_files(tmp_path)
    assert sum(a["iscrowd"] for a in gt["annotations"]) >= 2
    assert any(isinstance(a["segmentation"], dict) for a in gt["annotations"] if not a["iscrowd"])
    m = evaluate_files(tmp_path / "gt.json", tmp_path / "pred.json", save_dir=tmp_path / "out")
    ours_segm = np.array([m[k] for k in SEGM_KEYS])
    ours_bbox = np.array([m[k] for k in SUMMARY_KEYS])
    ref_segm = np.maximum(pycocotools_stats(gt, preds, "segm"), 0)
    ref_bbox = np.maximum(pycocotools_stats(gt, preds, "bbox"), 0)
    np.testing.assert_allclose(ours_segm, ref_segm, atol=1e-12)
    np.testing.assert_allclose(ours_bbox, ref_bbox, atol=1e-12)
    assert 0.2 < m["segm_map50_95"] < 0.95 and m["segm_map50_95"] != m["map50_95"]
    saved = json.loads((tmp_path / "out/metrics.json").read_text())
    assert saved["segm_map50"] == m["segm_map50"]
    assert {"segm_ap50", "segm_ap50_95"} <= set(saved["per_class"][0])


def test_box_only_predictions_give_no_segm(tmp_path):
    gt, preds = coco_files(tmp_path, seed=1)
    boxes_only = [{k: v for k, v in p.items() if k != "segmentation"} for p in preds if "bbox" in p]
    (tmp_path / "pred.json").write_text(json.dumps(boxes_only))
    m = evaluate_files(tmp_path / "gt.json", tmp_path / "pred.json", save_dir=tmp_path / "out")
    assert "segm_map50_95" not in m and m["map50_95"] > 0


def test_evaluator_from_records_equals_pycocotools():
    """What validation does: GT outlines (rings) as polygons, predicted masks as arrays."""
    rng = np.random.default_rng(2)
    ev = Evaluator(["a", "b"])
    images, anns, preds = [], [], []
    for i in range(8):
        polys = [_blob(rng) for _ in range(3)]
        rings = [[p.reshape(-1, 2)] for p in polys]
        boxes = np.array([[*r[0].min(0), *r[0].max(0)] for r in rings])
        labels = np.array([0, 1, 0])
        masks = np.stack([coco_mask.decode(coco_mask.frPyObjects([(p.reshape(-1, 2) + rng.normal(0, 1.2, (12, 2)))
                                                                  .clip(0, [W, H]).ravel().tolist()], H, W)[0])
                          for p in polys])
        scores = rng.uniform(0.2, 1, 3)
        ev.add(boxes, labels, Detections(boxes + rng.normal(0, 1, boxes.shape), scores, labels, masks), (H, W),
               gt_segms=[outline_segmentation(r, b) for r, b in zip(rings, boxes)])
        images.append({"id": i + 1, "width": W, "height": H})
        for r, b, lab in zip(rings, boxes, labels):
            seg = outline_segmentation(r, b)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "segmentation": seg,
                         "area": float(coco_mask.area(coco_mask.merge(coco_mask.frPyObjects(seg, H, W))))})
        for rle, s, lab in zip(encode_masks(masks), scores, labels):
            preds.append({"image_id": i + 1, "category_id": int(lab) + 1, "segmentation": rle, "score": float(s)})
    assert ev.has_masks
    m = ev.compute()
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    np.testing.assert_allclose([m[k] for k in SEGM_KEYS], np.maximum(pycocotools_stats(gt, preds, "segm"), 0),
                               atol=1e-12)
    assert m["segm_map50_95"] > 0.3


def test_masks_must_match_the_image():
    ev = Evaluator(["a"])
    with pytest.raises(ValueError, match="masks of"):
        ev.add(np.zeros((0, 4)), [], Detections([[0, 0, 2, 2]], [0.5], [0], np.zeros((1, 5, 5), np.uint8)), (6, 5),
               gt_segms=[])


def test_cli_eval_prints_box_and_mask_map(tmp_path, capsys):
    from detforge.cli import main

    coco_files(tmp_path, seed=3)
    assert main(["eval", f"gt={tmp_path / 'gt.json'}", f"pred={tmp_path / 'pred.json'}",
                 f"save_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert "mAP50-95" in out and "mask mAP50-95" in out
