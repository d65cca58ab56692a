"""``detforge eval``: metrics for any model's predictions, given as files.

``gt`` is a COCO dataset json (images, annotations, categories), ``pred`` a COCO results json
(a list of ``{image_id, category_id, bbox [x, y, w, h], score}``). Category ids may be anything
the gt file uses: classes are the gt's categories sorted by id. Predictions naming an image or
category the gt does not have are left out and counted. Crowd annotations (``iscrowd: 1``) are
ignore regions, as in pycocotools: a prediction on one is neither a TP nor an FP, for the COCO
mAP and the fixed-threshold P/R/F1 alike (``detforge.eval.threshold`` states the rule).

Instance masks: when the predictions carry ``segmentation`` (RLE, as Detectron2 / detforge
predict write them, or polygons) and the ground truth has segmentations, the COCO mask mAP is
reported too (``segm_map50_95`` ...), computed from the files' own segmentations and areas, so
it equals pycocotools' ``iouType="segm"`` on the same files (polygon predictions are turned
into RLE first, which pycocotools' loadRes needs). A prediction may then omit
``bbox`` (its mask's bounds are used); a ground-truth object without a segmentation counts
with its box as its mask.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from faster_coco_eval.core import mask as coco_mask

from detforge.eval.coco import box_polygon
from detforge.eval.evaluator import Evaluator
from detforge.records import Detections

log = logging.getLogger(__name__)


def increment_dir(base: Path) -> Path:
    """Create and return ``base`` if it does not exist yet, else ``base2``, ``base3``, ..."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}{n}")
        try:
            candidate.mkdir()  # atomic: two processes never get the same folder
            return candidate
        except FileExistsError:
            n += 1


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _bbox_xyxy(bbox, path: Path, where: str) -> list[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{path}: {where}: bbox must be [x, y, w, h], got {bbox!r}")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {where}: bbox values must be numbers, got {bbox!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"{path}: {where}: bbox has a non-finite value {bbox!r}")
    return [x, y, x + w, y + h]


def _require(entry: dict, keys: tuple[str, ...], path: Path, where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {where} must be an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{path}: {where} lacks {missing}")


def _as_rle(seg, height: int | None = None, width: int | None = None) -> dict:
    if isinstance(seg, list):
        return coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
    return coco_mask.frPyObjects(seg, *seg["size"]) if isinstance(seg["counts"], list) else seg


def _segmentation(seg, image: dict, path: Path, where: str):
    """A COCO segmentation checked against its image (None when absent); an error names the entry."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    h, w = int(image.get("height", 0)), int(image.get("width", 0))
    if isinstance(seg, list):
        if not all(isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                   and all(isinstance(v, (int, float)) for v in poly) for poly in seg):
            raise ValueError(f"{path}: {where}: segmentation polygons must be flat [x1, y1, x2, y2, ...] lists of "
                             "at least 3 points")
        if not (h and w):
            raise ValueError(f"{path}: {where}: a polygon segmentation needs the image's width and height")
        return seg
    if not (isinstance(seg, dict) and "counts" in seg and isinstance(seg.get("size"), list) and len(seg["size"]) == 2):
        raise ValueError(f"{path}: {where}: segmentation must be polygons or an RLE {{size: [h, w], counts}}")
    if h and w and [int(v) for v in seg["size"]] != [h, w]:
        raise ValueError(f"{path}: {where}: segmentation RLE size {seg['size']} differs from the image's [{h}, {w}]")
    return seg


def evaluate_files(
    gt_json: str | Path,
    pred_json: str | Path,
    conf: float = 0.5,
    iou_thr: float = 0.5,
    save_dir: str | Path | None = None,
) -> dict:
    """Compute the Evaluator's metrics for a predictions file against a COCO gt file; write
    ``metrics.json`` and the plots into ``save_dir`` (default: a new ``runs/eval/evalN``)."""
    gt_path, pred_path = Path(gt_json), Path(pred_json)
    gt = _load_json(gt_path, "ground-truth")
    if not isinstance(gt, dict):
        raise ValueError(f"{gt_path}: expected a COCO dataset object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"{gt_path}: missing or non-list '{key}'")
    if not gt["categories"]:
        raise ValueError(f"{gt_path}: no categories")
    for i, cat in enumerate(gt["categories"]):
        _require(cat, ("id",), gt_path, f"categories[{i}]")
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    names = [str(c.get("name", c["id"])) for c in cats]
    cat_index = {c["id"]: i for i, c in enumerate(cats)}

    image_index: dict = {}
    for i, img in enumerate(gt["images"]):
        _require(img, ("id",), gt_path, f"images[{i}]")
        if img["id"] in image_index:
            raise ValueError(f"{gt_path}: image id {img['id']!r} appears twice")
        image_index[img["id"]] = i
    n_images = len(gt["images"])
    gt_boxes = [[] for _ in range(n_images)]
    gt_labels = [[] for _ in range(n_images)]
    gt_areas = [[] for _ in range(n_images)]
    crowd_boxes = [[] for _ in range(n_images)]
    crowd_labels = [[] for _ in range(n_images)]
    gt_segs = [[] for _ in range(n_images)]
    crowd_segs = [[] for _ in range(n_images)]
    crowd = 0
    for i, ann in enumerate(gt["annotations"]):
        where = f"annotations[{i}]"
        _require(ann, ("image_id", "category_id", "bbox"), gt_path, where)
        if ann["image_id"] not in image_index:
            raise ValueError(f"{gt_path}: {where} refers to image_id {ann['image_id']!r}, not in images")
        if ann["category_id"] not in cat_index:
            raise ValueError(f"{gt_path}: {where} refers to category_id {ann['category_id']!r}, not in categories")
        box = _bbox_xyxy(ann["bbox"], gt_path, where)
        j = image_index[ann["image_id"]]
        if ann.get("iscrowd", 0):
            crowd += 1
            crowd_boxes[j].append(box)
            crowd_labels[j].append(cat_index[ann["category_id"]])
            crowd_segs[j].append(_segmentation(ann.get("segmentation"), gt["images"][j], gt_path, where))
            continue
        gt_segs[j].append(_segmentation(ann.get("segmentation"), gt["images"][j], gt_path, where))
        gt_boxes[j].append(box)
        gt_labels[j].append(cat_index[ann["category_id"]])
        gt_areas[j].append(float(ann.get("area", (box[2] - box[0]) * (box[3] - box[1]))))

    preds = _load_json(pred_path, "predictions")
    if isinstance(preds, dict) and isinstance(preds.get("annotations"), list):
        preds = preds["annotations"]
    if not isinstance(preds, list):
        raise ValueError(f"{pred_path}: expected a list of {{image_id, category_id, bbox, score}}")
    det_lists = [([], [], [], []) for _ in range(n_images)]
    unknown_image = unknown_category = 0
    for i, p in enumerate(preds):
        where = f"entry {i}"
        _require(p, ("image_id", "category_id", "score"), pred_path, where)
        if "bbox" not in p and "segmentation" not in p:
            raise ValueError(f"{pred_path}: {where} lacks ['bbox'] (or a 'segmentation')")
        if p["image_id"] not in image_index:
            unknown_image += 1
            continue
        if p["category_id"] not in cat_index:
            unknown_category += 1
            continue
        try:
            score = float(p["score"])
        except (TypeError, ValueError):
            raise ValueError(f"{pred_path}: {where}: score must be a number, got {p['score']!r}") from None
        if not math.isfinite(score):
            raise ValueError(f"{pred_path}: {where}: score is not finite ({p['score']!r})")
        boxes, scores, labels, segs = det_lists[image_index[p["image_id"]]]
        seg, img = None, gt["images"][image_index[p["image_id"]]]
        if "segmentation" in p:  # as RLE: COCO's loadRes reads results' masks only in that form
            seg = _segmentation(p["segmentation"], img, pred_path, where)
            seg = None if seg is None else _as_rle(seg, int(img.get("height", 0)), int(img.get("width", 0)))
        if "bbox" in p or seg is None:
            bbox = p.get("bbox")
        else:
            bbox = coco_mask.toBbox(seg).tolist()
        boxes.append(_bbox_xyxy(bbox, pred_path, where))
        scores.append(score)
        labels.append(cat_index[p["category_id"]])
        segs.append(seg)

    if unknown_image or unknown_category:
        log.warning(
            "%s: left out %d predictions whose image_id is not in %s and %d whose category_id is not",
            pred_path, unknown_image, gt_path.name, unknown_category,
        )
    if crowd:
        log.info("%s: %d crowd regions (iscrowd=1) used as ignore regions", gt_path, crowd)

    with_masks = [s is not None for _, _, _, segs in det_lists for s in segs]
    masks = any(with_masks) and all(with_masks) and any(s is not None for segs in gt_segs for s in segs)
    if any(with_masks) and not masks:
        log.warning("%s: no mask mAP: %s", pred_path, "some predictions have no segmentation" if not all(with_masks)
                    else f"{gt_path.name} has no segmentations")
    evaluator = Evaluator(names, conf=conf, iou_thr=iou_thr)
    for j, img in enumerate(gt["images"]):
        boxes, scores, labels, segs = det_lists[j]
        order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
        det = Detections(np.asarray(boxes, np.float64).reshape(-1, 4)[order], np.asarray(scores)[order],
                         np.asarray(labels, np.int64)[order])
        evaluator.add(
            np.asarray(gt_boxes[j], np.float64).reshape(-1, 4),
            np.asarray(gt_labels[j], np.int64),
            det,
            (int(img.get("height", 0)), int(img.get("width", 0))),
            gt_areas=np.asarray(gt_areas[j], np.float64),
            crowd_boxes=np.asarray(crowd_boxes[j], np.float64).reshape(-1, 4),
            crowd_labels=np.asarray(crowd_labels[j], np.int64),
            **({"gt_segms": [s if s is not None else box_polygon(b) for s, b in zip(gt_segs[j], gt_boxes[j])],
                "crowd_segms": [s if s is not None else box_polygon(b) for s, b in zip(crowd_segs[j], crowd_boxes[j])],
                "det_segms": [segs[k] for k in order]} if masks else {}),
        )
    metrics = evaluator.compute()
    metrics["left_out"] = {
        "unknown_image_id": unknown_image,
        "unknown_category_id": unknown_category,
    }
    metrics["crowd_regions"] = crowd

    out_dir = increment_dir(Path("runs/eval/eval")) if save_dir is None else Path(save_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    evaluator.save_plots(out_dir)
    metrics["save_dir"] = str(out_dir)
    return metrics
