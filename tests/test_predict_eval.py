"""predict -> eval: `detforge predict` on a dataset writes its results in the dataset's image
and category ids, beside the matching ground truth (save_gt=true), and `detforge eval` on
those files reproduces `detforge val` on the same split (same conf floor 0 and max_det) to
1e-4: the two run the model at different batch sizes, and float32 kernels that differ by batch
move scores by ~1e-7, enough to reorder near-tied detections of a one-epoch model (2e-6 of
mAP50 on one CPU, 2.4e-5 on another); a real mismatch of ids, boxes or scaling moves mAP by
far more. Checked on BCCD val (VOC: ids 1..N / 1..K) with an FCOS-n trained for one epoch in
the test, and on the same split as a COCO folder with its own sparse ids, evaluated against
that folder's own annotation file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detforge.cli import main

KEYS = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large", "precision", "recall", "f1")


def _metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _assert_same(val: dict, ev: dict) -> None:
    diffs = {k: abs(val[k] - ev[k]) for k in KEYS}
    assert max(diffs.values()) < 1e-4, {k: (val[k], ev[k]) for k in KEYS}
    assert (val["tp"], val["fp"], val["fn"]) == (ev["tp"], ev["fp"], ev["fn"])


@pytest.fixture(scope="module")
def trained(bccd_root, tmp_path_factory):
    """FCOS-n, one epoch on BCCD train at 128 px (about a minute on 2 cores)."""
    out = tmp_path_factory.mktemp("roundtrip")
    assert main(["train", "model=fcos-n", f"data={bccd_root}", "epochs=1", "imgsz=128", "batch=8", "workers=0",
                 "plots=false", "verbose=false", f"project={out}", "name=fcos"]) == 0
    return out, out / "fcos" / "weights" / "best.pt"


@pytest.mark.slow
def test_predict_then_eval_reproduces_val_on_bccd(trained, bccd_root):
    out, best = trained
    conf = "conf=0.1"  # the P/R/F1 threshold of both; the mAP ranks every detection
    assert main(["val", f"model={best}", f"data={bccd_root}", conf, f"save_dir={out / 'val'}", "verbose=false",
                 "plots=false", "save_json=true"]) == 0
    assert main(["predict", f"model={best}", f"source={bccd_root}", "split=val", "conf=0", "save=false",
                 "save_json=true", "save_gt=true", f"save_dir={out / 'pred'}", "verbose=false"]) == 0
    gt = json.loads((out / "pred" / "gt.json").read_text())
    preds = json.loads((out / "pred" / "predictions.json").read_text())
    assert len(gt["images"]) == 87 and [c["id"] for c in gt["categories"]] == [1, 2, 3]
    assert {p["image_id"] for p in preds} <= {im["id"] for im in gt["images"]}
    assert {p["category_id"] for p in preds} <= {1, 2, 3} and len(preds) > 1000
    assert main(["eval", f"gt={out / 'pred' / 'gt.json'}", f"pred={out / 'pred' / 'predictions.json'}", conf,
                 f"save_dir={out / 'eval'}", "plots=false"]) == 0
    val, ev = _metrics(out / "val"), _metrics(out / "eval")
    assert val["map50"] > 0.005  # a model that finds something: the ranking is not all noise
    _assert_same(val, ev)
    # val's own predictions.json (save_json=true): the detections it ranked, in the same ids, so
    # eval on them gives val's figures exactly (the same forward pass, no batch difference)
    val_preds = json.loads((out / "val" / "predictions.json").read_text())
    assert {p["image_id"] for p in val_preds} <= {im["id"] for im in gt["images"]} and len(val_preds) > 1000
    assert main(["eval", f"gt={out / 'pred' / 'gt.json'}", f"pred={out / 'val' / 'predictions.json'}", conf,
                 f"save_dir={out / 'eval_val'}", "plots=false"]) == 0
    exact = _metrics(out / "eval_val")
    assert {k: exact[k] for k in KEYS} == pytest.approx({k: val[k] for k in KEYS}, abs=1e-12)


@pytest.mark.slow
def test_predict_on_a_coco_folder_uses_its_own_ids(trained, bccd_root, tmp_path):
    from detforge.data.formats import convert_dataset

    out, best = trained
    coco = convert_dataset(bccd_root, "coco", tmp_path / "coco", link=True)
    category_ids = {1: 5, 2: 7, 3: 9}  # sparse ids, the same class order
    image_ids = {}
    for ann in sorted((coco / "annotations").glob("instances_*.json")):
        doc = json.loads(ann.read_text())
        image_ids = {im["id"]: 1000 + 7 * im["id"] for im in doc["images"]}
        for im in doc["images"]:
            im["id"] = image_ids[im["id"]]
        for c in doc["categories"]:
            c["id"] = category_ids[c["id"]]
        for a in doc["annotations"]:
            a["image_id"], a["category_id"] = image_ids[a["image_id"]], category_ids[a["category_id"]]
        ann.write_text(json.dumps(doc))
    ann = coco / "annotations" / "instances_val.json"
    image_ids = {im["id"] for im in json.loads(ann.read_text())["images"]}
    assert main(["val", f"model={best}", f"data={coco}", f"save_dir={tmp_path / 'val'}", "verbose=false",
                 "plots=false", "save_json=true"]) == 0
    val_preds = json.loads((tmp_path / "val" / "predictions.json").read_text())
    assert {p["image_id"] for p in val_preds} <= image_ids and min(image_ids) > 1000
    assert {p["category_id"] for p in val_preds} <= set(category_ids.values())
    assert main(["predict", f"model={best}", f"data={coco}", "conf=0", "save=false", "save_json=true",
                 f"save_dir={tmp_path / 'pred'}", "verbose=false"]) == 0
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert {p["image_id"] for p in preds} <= image_ids and min(image_ids) > 1000
    assert {p["category_id"] for p in preds} == set(category_ids.values())
    # scored against the folder's own annotation file, as a user would
    assert main(["eval", f"gt={ann}", f"pred={tmp_path / 'pred' / 'predictions.json'}", "conf=0.5",
                 f"save_dir={tmp_path / 'eval'}", "plots=false"]) == 0
    val, ev = _metrics(tmp_path / "val"), _metrics(tmp_path / "eval")
    assert val["conf"] == 0.5 and np.isclose(val["map50"], _metrics(out / "val")["map50"], atol=1e-12)
    _assert_same(val, ev)


def test_save_gt_needs_a_dataset_source(tmp_path, capsys):
    import cv2
    from deploy_helpers import save_test_checkpoint, spread_model

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    pt = save_test_checkpoint(spread_model("fcos-n"), tmp_path / "best.pt", 64)
    assert main(["predict", f"model={pt}", f"source={tmp_path / 'a.png'}", "save_gt=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "save_gt=true" in err and "not a dataset" in err
