"""COCO box mAP through faster-coco-eval (a C++ port of pycocotools' matching, same numbers).

Inputs stay in detforge's records (absolute xyxy boxes, 0-based labels); this module builds the
in-memory COCO dicts (image ids 1..N, category ids 1..K, xywh boxes, ``area = w * h`` unless the
caller passes the file's own areas, ``iscrowd = 0``; crowd regions, when given, go in with
``iscrowd = 1``, which COCOeval treats as ignore regions) and reads the results back.

Absent values: COCO marks a metric it cannot compute (no ground truth in that area range or
class) with -1; detforge reports 0.0 for those so every key is always a plain number.

Instance masks (``iou_type="segm"``): each image then also brings its ground-truth
segmentations (COCO polygons or RLE, aligned with the boxes), its crowd regions'
segmentations (their boxes when none are given) and its detections' RLE masks; the ground
truth's ``area`` is its mask's area unless the caller passes the file's own areas, as
pycocotools reads them. The same numbers as pycocotools' ``iouType="segm"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.core import mask as coco_mask

from detforge.records import Detections

# the summary order of COCOeval.stats for bbox
SUMMARY_KEYS = ("map50_95", "map50", "map75", "map_small", "map_medium", "map_large")

# the same, for instance masks (iou_type="segm"); metrics.csv/json carry them with this prefix
SEGM_KEYS = tuple(f"segm_{k}" for k in SUMMARY_KEYS)

GroundTruth = tuple[np.ndarray, np.ndarray]  # (boxes xyxy [N, 4], labels [N])
# per image: (GT segmentations [N], crowd segmentations [M] or None, detection RLEs [K])
Segmentations = tuple[list, list | None, list]


def box_polygon(box) -> list[list[float]]:
    """A box as a COCO polygon segmentation (for an object or crowd region without one)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def outline_segmentation(rings, box) -> list[list[float]]:
    """An object's outline (rings of x, y) as a COCO polygon segmentation; its box when it has none."""
    polys = [np.asarray(r, np.float64).reshape(-1).tolist() for r in rings or [] if len(r) >= 3]
    return polys or box_polygon(box)


def object_areas(boxes: np.ndarray, polygons: list | None, height: int, width: int) -> np.ndarray | None:
    """COCO's ``area`` of each object: its outline's mask area (as pycocotools rasterises the
    polygon) where it has an outline, else its box's; None when the sample has no outlines at
    all (callers then use ``w * h``, the box-only convention)."""
    if polygons is None:
        return None
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.array([segmentation_area(outline_segmentation(rings, b), height, width) if rings
                     else (b[2] - b[0]) * (b[3] - b[1]) for rings, b in zip(polygons, boxes)], np.float64)


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks [K, H, W] -> COCO RLEs (``counts`` as text, ready for json)."""
    masks = np.asarray(masks, np.uint8)
    if len(masks) == 0:
        return []
    rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    for r in rles:
        if isinstance(r["counts"], bytes):
            r["counts"] = r["counts"].decode("ascii")
    return rles


def segmentation_area(seg, height: int, width: int) -> float:
    """Pixel area of a COCO segmentation (polygons or RLE), as pycocotools rasterises it."""
    if isinstance(seg, list):
        return float(coco_mask.area(coco_mask.merge(coco_mask.frPyObjects(seg, height, width))))
    if isinstance(seg["counts"], list):
        seg = coco_mask.frPyObjects(seg, *seg["size"])
    return float(coco_mask.area(seg))


def _xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def to_coco(
    gt: Sequence[GroundTruth],
    dets: Sequence[Detections],
    num_classes: int,
    image_sizes: Sequence[tuple[int, int]],
    gt_areas: Sequence[np.ndarray | None] | None = None,
    crowds: Sequence[GroundTruth] | None = None,
    segms: Sequence[Segmentations] | None = None,
) -> tuple[dict, list[dict]]:
    """Build (ground-truth dataset dict, detection results list) in COCO form.

    ``image_sizes`` are (h, w) per image; ``gt_areas`` optionally gives each image's annotation
    areas (e.g. segmentation areas from a COCO file), which decide small/medium/large;
    ``crowds`` gives each image's crowd regions (boxes xyxy, labels) as ``iscrowd = 1``
    annotations (their area decides nothing: COCOeval ignores crowd regions in every range);
    ``segms`` adds each annotation's and detection's ``segmentation`` (see ``Segmentations``).
    """
    if not (len(gt) == len(dets) == len(image_sizes)):
        raise ValueError(
            f"coco_map: {len(gt)} ground-truth entries, {len(dets)} detection entries and "
            f"{len(image_sizes)} image sizes; they must be one per image"
        )
    images, annotations, results = [], [], []
    for i, ((boxes, labels), det, (h, w)) in enumerate(zip(gt, dets, image_sizes)):
        image_id = i + 1
        images.append({"id": image_id, "width": int(w), "height": int(h)})
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        xywh = _xywh(boxes)
        areas = None if gt_areas is None else gt_areas[i]
        if areas is None and segms is not None:  # COCO's own rule: a mask's area
            areas = [segmentation_area(seg, h, w) for seg in segms[i][0]]
        areas = xywh[:, 2] * xywh[:, 3] if areas is None else np.asarray(areas, np.float64).reshape(-1)
        _check_labels(labels, num_classes, f"ground truth of image {i}")
        first = len(annotations)
        # .tolist() converts to Python floats in one call (per-value float() is slow here)
        for box, label, area in zip(xywh.tolist(), (labels + 1).tolist(), areas.tolist()):
            annotations.append(
                {
                    # ids start at 1: COCOeval treats id 0 as "unmatched"
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": box,
                    "area": area,
                    "iscrowd": 0,
                }
            )
        if segms is not None:
            _attach(annotations[first:], segms[i][0], f"ground truth of image {i}")
            first = len(annotations)
        if crowds is not None:
            crowd_boxes, crowd_labels = crowds[i]
            crowd_labels = np.asarray(crowd_labels, dtype=np.int64).reshape(-1)
            _check_labels(crowd_labels, num_classes, f"crowd regions of image {i}")
            crowd_xywh = _xywh(crowd_boxes)
            for box, label in zip(crowd_xywh.tolist(), (crowd_labels + 1).tolist()):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 1})
            if segms is not None:
                crowd_segs = segms[i][1]
                if crowd_segs is None:
                    crowd_segs = [box_polygon(b) for b in np.asarray(crowd_boxes).reshape(-1, 4)]
                _attach(annotations[first:], crowd_segs, f"crowd regions of image {i}")
        first = len(results)
        _check_labels(det.labels, num_classes, f"detections of image {i}")
        det_labels = (np.asarray(det.labels, np.int64) + 1).tolist()
        det_scores = np.asarray(det.scores, np.float64).tolist()
        for box, score, label in zip(_xywh(det.boxes).tolist(), det_scores, det_labels):
            results.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
        if segms is not None:
            _attach(results[first:], segms[i][2], f"detections of image {i}")
            for r in results[first:]:
                # as Detectron2 does: with a bbox, COCO would take the box's area for the mask's
                # (small / medium / large); without it, loadRes computes the mask's own
                del r["bbox"]
    categories = [{"id": k + 1, "name": str(k)} for k in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _attach(entries: list[dict], segmentations: list, where: str) -> None:
    if len(segmentations) != len(entries):
        raise ValueError(f"{where}: {len(segmentations)} segmentations for {len(entries)} boxes")
    for entry, seg in zip(entries, segmentations):
        entry["segmentation"] = seg


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: class ids must lie in 0..{num_classes - 1}, got {np.unique(labels).tolist()}")


def _mean_valid(values: np.ndarray) -> float:
    """COCO's average: over entries > -1 (the -1 entries are 'not computable')."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0


def coco_map(
    gt: Sequence[GroundTruth],
    dets: Sequence[Detections],
    num_classes: int,
    image_sizes: Sequence[tuple[int, int]],
    gt_areas: Sequence[np.ndarray | None] | None = None,
    crowds: Sequence[GroundTruth] | None = None,
    iou_type: str = "bbox",
    segms: Sequence[Segmentations] | None = None,
) -> dict:
    """COCO bbox (or, with ``iou_type="segm"`` and ``segms``, mask) mAP (maxDets 100, the
    standard) plus per-class AP50-95 and AP50.

    Returns ``map50_95, map50, map75, map_small, map_medium, map_large`` (floats, 0.0 where COCO
    reports -1) and ``per_class_ap50_95``, ``per_class_ap50`` (lists of K floats; 0.0 for a
    class without ground truth). With no detections at all every AP is 0.0.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"unknown iou_type {iou_type!r}; allowed: 'bbox', 'segm'")
    if iou_type == "segm" and segms is None:
        raise ValueError("iou_type='segm' needs the segmentations (segms=)")
    gt_dict, results = to_coco(gt, dets, num_classes, image_sizes, gt_areas, crowds,
                               segms if iou_type == "segm" else None)
    zeros = {k: 0.0 for k in SUMMARY_KEYS}
    zeros["per_class_ap50_95"] = [0.0] * num_classes
    zeros["per_class_ap50"] = [0.0] * num_classes
    if not gt_dict["annotations"] or not results:
        return zeros

    coco_gt = COCO(gt_dict)
    coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()

    out = {key: max(float(v), 0.0) for key, v in zip(SUMMARY_KEYS, evaluator.stats[:6])}
    # precision: [T iou thresholds, R recall points, K classes, A area ranges, M max-dets]
    precision = np.asarray(evaluator.eval["precision"])
    iou_thrs = np.asarray(evaluator.params.iouThrs)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    cat_ids = list(evaluator.params.catIds)
    per_50_95, per_50 = [], []
    for k in range(num_classes):
        col = cat_ids.index(k + 1)
        per_50_95.append(_mean_valid(precision[:, :, col, 0, -1]))
        per_50.append(_mean_valid(precision[t50, :, col, 0, -1]))
    out["per_class_ap50_95"] = per_50_95
    out["per_class_ap50"] = per_50
    return out
