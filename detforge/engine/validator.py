"""Run a model over a validation loader and score it against the original annotations.

Predictions are mapped back to original-image pixels (undoing resize/letterbox) and compared
with the boxes as read from disk, so the numbers do not depend on the input size or resize
mode. Under DDP each rank predicts its shard; the predictions are gathered on rank 0,
merged in image order and scored once there, and the metrics are broadcast, so every rank
holds the same numbers and they equal a single-process evaluation. A model that predicts
instance masks (its postprocess returns ``masks``) is scored on them too (segm mAP), against
the samples' outlines."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from detforge.data.augment.fit import boxes_to_original
from detforge.data.polygons import masks_to_original
from detforge.engine import distributed as dist_utils
from detforge.eval.coco import encode_masks, object_areas, outline_segmentation
from detforge.eval.evaluator import Evaluator
from detforge.records import Detections

LOG = logging.getLogger("detforge")


def to_original(boxes: np.ndarray, meta: dict) -> np.ndarray:
    """Input-tensor pixels -> original-image pixels, clipped to the image."""
    h, w = meta["orig_size"]
    return boxes_to_original(boxes, meta["scale"], meta["pad"], w, h)


@torch.no_grad()
def predict_loader(model, loader, device, amp_dtype=None, max_det=300, desc="val", show=True):
    """Yield (meta, Detections in original pixels) for every image of the loader."""
    model.eval()
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    bar = tqdm(loader, desc=desc, leave=False, disable=not show, dynamic_ncols=True)
    for images, _targets, metas in bar:
        x = images.to(device, non_blocking=True).float().div_(255)
        with ctx:
            raw = model(x)
        results = model.postprocess(raw, tuple(x.shape[-2:]), max_det=max_det)
        for meta, res in zip(metas, results):
            boxes = res["boxes"].float().cpu().numpy()
            masks = None
            if "masks" in res:  # a mask model: binary masks in input pixels, back to the image's
                masks = masks_to_original(res["masks"].cpu().numpy(), meta["scale"], meta["pad"], meta["orig_size"])
            yield meta, Detections(
                to_original(boxes, meta), res["scores"].float().cpu().numpy(), res["labels"].cpu().numpy(), masks
            )


def _mask_metrics(samples, rles) -> bool:
    """Mask mAP needs predicted masks for every image and ground-truth outlines in the data."""
    if not rles or any(r is None for r in rles):
        return False
    if not any(s.polygons is not None for s in samples):
        LOG.warning("the model predicts instance masks but the validation data has no outlines (polygons): "
                    "mask mAP is not computed")
        return False
    return True


def evaluate(model, loader, names, conf, iou_thr, device, amp_dtype=None, max_det=300, show=True):
    """(metrics dict, the evaluator (for plots), {sample index: (Detections, mask RLEs or None)}),
    the last two on the main rank only. Samples come from loader.dataset.samples."""
    samples = loader.dataset.samples
    per_image = []
    for meta, det in predict_loader(model, loader, device, amp_dtype, max_det, show=show):
        rles = None
        if det.masks is not None:  # kept as RLE: full-size masks of every image would not fit
            rles = encode_masks(det.masks)
            det = Detections(det.boxes, det.scores, det.labels)
        per_image.append((int(meta["index"]), det, rles))
    # predictions go to rank 0, which scores once and broadcasts the numbers
    gathered = dist_utils.gather_to_main(per_image)
    result = None
    if gathered is not None:
        merged = {}
        for part in gathered:
            for idx, det, rles in part:
                merged.setdefault(idx, (det, rles))  # a padded duplicate from a sampler is counted once
        masks = _mask_metrics(samples, [rles for _, rles in merged.values()])
        evaluator = Evaluator(names, conf=conf, iou_thr=iou_thr)
        for idx in sorted(merged):
            s = samples[idx]
            det, rles = merged[idx]
            segms = {}
            if masks:  # an object without an outline counts with its box as its mask
                outlines = s.polygons if s.polygons is not None else [[]] * len(s.boxes)
                segms = {"gt_segms": [outline_segmentation(r, b) for r, b in zip(outlines, s.boxes)], "det_segms": rles}
            # crowd regions (COCO iscrowd=1) reach the evaluator as ignore regions; an object
            # with an outline is sized by its mask's area (COCO's "area") for small/medium/large
            evaluator.add(s.boxes, s.labels, det, (s.height, s.width),
                          gt_areas=object_areas(s.boxes, s.polygons, s.height, s.width),
                          crowd_boxes=s.crowd_boxes, crowd_labels=s.crowd_labels, **segms)
        result = (evaluator.compute(), evaluator, merged)
    metrics = dist_utils.broadcast_object(result[0] if result else None)
    return (metrics, result[1], result[2]) if result else (metrics, None, {})
