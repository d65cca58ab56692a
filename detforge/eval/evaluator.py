"""Collect per-image ground truth and detections, then compute every metric detforge reports.

Used by the trainer's validation, ``detforge val`` and ``detforge eval``. The state is plain
numpy (picklable), so distributed ranks can gather their states and merge them on one rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detforge.eval.coco import SUMMARY_KEYS, coco_map, encode_masks
from detforge.eval.threshold import (
    confidence_sweep,
    match_image,
    normalize_rows,
    threshold_metrics,
)
from detforge.records import Detections

FITNESS_KINDS = ("map50_f1", "map50_95", "map50", "f1")


def fitness(metrics: dict, kind: str = "map50_f1") -> float:
    """The number the best checkpoint is chosen by; ``map50_f1`` = mean(mAP50, F1) (seed 000)."""
    if kind == "map50_f1":
        return 0.5 * (float(metrics["map50"]) + float(metrics["f1"]))
    if kind in FITNESS_KINDS:
        return float(metrics[kind])
    raise ValueError(f"unknown fitness {kind!r}; allowed: {list(FITNESS_KINDS)}")


class Evaluator:
    """Accumulates images with ``add`` and reports with ``compute``.

    ``compute()`` keys: map50_95, map50, map75, map_small, map_medium, map_large (COCO, through
    faster-coco-eval), precision, recall, f1, iou, tp, fp, fn (fixed-threshold rules of
    ``detforge.eval.threshold`` at ``conf`` and ``iou_thr``), per_class (one dict per class:
    class, images, instances, tp, fp, fn, precision, recall, f1, iou, ap50, ap50_95), confusion
    ((K+1) x (K+1) counts, rows GT, columns prediction, last index background), conf, iou_thr.
    When every image came with ground-truth segmentations and predicted masks (a mask model),
    also the COCO mask mAP as segm_map50_95, segm_map50, ... (``SEGM_KEYS``) and segm_ap50 /
    segm_ap50_95 per class; the fixed-threshold numbers stay box-based.
    """

    def __init__(self, names: list[str], conf: float = 0.5, iou_thr: float = 0.5) -> None:
        if not names:
            raise ValueError("Evaluator needs at least one class name")
        self.names = [str(n) for n in names]
        self.conf = float(conf)
        self.iou_thr = float(iou_thr)
        self._images: list[tuple] = []

    def __len__(self) -> int:
        return len(self._images)

    def reset(self) -> None:
        self._images = []

    def add(
        self,
        gt_boxes: np.ndarray,
        gt_labels: np.ndarray,
        det: Detections,
        image_size: tuple[int, int],
        gt_areas: np.ndarray | None = None,
        crowd_boxes: np.ndarray | None = None,
        crowd_labels: np.ndarray | None = None,
        gt_segms: list | None = None,
        crowd_segms: list | None = None,
        det_segms: list | None = None,
    ) -> None:
        """One image: GT (xyxy absolute, 0-based labels), its detections, (h, w); ``gt_areas``
        optionally overrides the box areas COCO uses for small/medium/large; ``crowd_boxes`` /
        ``crowd_labels`` are its crowd regions (ignore regions for every metric, as in COCO).

        Masks: ``gt_segms`` (one COCO segmentation per GT box: polygons or RLE; see
        ``detforge.eval.coco.outline_segmentation``), optionally ``crowd_segms``, and the
        detections' masks as RLEs in ``det_segms`` or as ``det.masks`` (uint8 [K, h, w], encoded
        here so the evaluator keeps only the compact RLEs)."""
        boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"image {len(self._images)}: {len(boxes)} GT boxes but {len(labels)} labels")
        k = len(self.names)
        crowd = np.asarray(crowd_boxes if crowd_boxes is not None else np.zeros((0, 4)), np.float32).reshape(-1, 4)
        crowd_lab = np.asarray(crowd_labels if crowd_labels is not None else np.zeros(0), np.int64).reshape(-1)
        if len(crowd) != len(crowd_lab):
            raise ValueError(f"image {len(self._images)}: {len(crowd)} crowd regions but {len(crowd_lab)} labels")
        for what, lab in (("ground-truth", labels), ("detection", det.labels), ("crowd region", crowd_lab)):
            if lab.size and (lab.min() < 0 or lab.max() >= k):
                raise ValueError(
                    f"image {len(self._images)}: {what} class ids {np.unique(lab).tolist()} "
                    f"outside 0..{k - 1} ({k} names)"
                )
        areas = None if gt_areas is None else np.asarray(gt_areas, np.float64).reshape(-1)
        if areas is not None and len(areas) != len(labels):
            raise ValueError(f"image {len(self._images)}: {len(areas)} areas for {len(labels)} GT boxes")
        if det_segms is None and det.masks is not None:
            if det.masks.shape[1:] != tuple(image_size):
                raise ValueError(f"image {len(self._images)}: masks of {det.masks.shape[1:]} for an image of "
                                 f"{tuple(image_size)} (h, w)")
            det_segms = encode_masks(det.masks)
        for what, segs, n in (("GT segmentations", gt_segms, len(labels)), ("crowd segmentations", crowd_segms, len(crowd)),
                              ("detection masks", det_segms, len(det.labels))):
            if segs is not None and len(segs) != n:
                raise ValueError(f"image {len(self._images)}: {len(segs)} {what} for {n} boxes")
        self._images.append(
            (
                boxes,
                labels,
                np.asarray(det.boxes, np.float32).copy(),
                np.asarray(det.scores, np.float32).copy(),
                np.asarray(det.labels, np.int64).copy(),
                (int(image_size[0]), int(image_size[1])),
                areas,
                crowd,
                crowd_lab,
                None if gt_segms is None else list(gt_segms),
                None if crowd_segms is None else list(crowd_segms),
                None if det_segms is None else list(det_segms),
            )
        )

    @property
    def has_masks(self) -> bool:
        """True when every image has GT segmentations and predicted masks: segm mAP is computed."""
        return bool(self._images) and all(im[9] is not None and im[11] is not None for im in self._images)

    # ---- distributed gathering -------------------------------------------------------------
    def state(self) -> list:
        """This evaluator's images as picklable numpy tuples (for all_gather_object)."""
        return list(self._images)

    def merge(self, states: Sequence[list]) -> "Evaluator":
        """Replace this evaluator's images by the gathered ``states`` (every rank's, this one
        included, concatenated in order). Returns self."""
        self._images = [image for state in states for image in state]
        return self

    # ---- metrics ---------------------------------------------------------------------------
    def _matches(self, conf: float) -> list:
        return [
            match_image(im[0], im[1], im[2], im[3], im[4], conf=conf, iou_thr=self.iou_thr,
                        crowd_boxes=im[7], crowd_labels=im[8])
            for im in self._images
        ]

    def compute(self) -> dict:
        gt = [(im[0], im[1]) for im in self._images]
        dets = [Detections(im[2], im[3], im[4]) for im in self._images]
        sizes = [im[5] for im in self._images]
        areas = [im[6] for im in self._images]
        crowds = [(im[7], im[8]) for im in self._images]
        coco = coco_map(gt, dets, len(self.names), sizes, areas if any(a is not None for a in areas) else None,
                        crowds=crowds)
        out = {key: coco[key] for key in SUMMARY_KEYS}
        segm = None
        if self.has_masks:
            segm = coco_map(gt, dets, len(self.names), sizes, areas if any(a is not None for a in areas) else None,
                            crowds=crowds, iou_type="segm", segms=[(im[9], im[10], im[11]) for im in self._images])
            out.update({f"segm_{key}": segm[key] for key in SUMMARY_KEYS})
        thr = threshold_metrics(self._matches(self.conf), self.names)
        for i, (row, ap50, ap) in enumerate(zip(thr["per_class"], coco["per_class_ap50"], coco["per_class_ap50_95"])):
            row["ap50"] = ap50
            row["ap50_95"] = ap
            if segm is not None:
                row["segm_ap50"] = segm["per_class_ap50"][i]
                row["segm_ap50_95"] = segm["per_class_ap50_95"][i]
        out.update(thr)
        out["conf"] = self.conf
        out["iou_thr"] = self.iou_thr
        return out

    def curves(self, confs: np.ndarray | None = None) -> dict:
        """Threshold rules applied at each confidence of ``confs`` (default 101 points 0..1)."""
        return confidence_sweep(self._matches(0.0), len(self.names), confs)

    def save_plots(self, save_dir: Path) -> list[Path]:
        """PR, F1-, precision- and recall-confidence curves (per class + mean) and the confusion
        matrix (counts and row-normalised) as PNGs in ``save_dir``; returns the paths.

        Curves come from the fixed-threshold rules swept over confidence 0, 0.01, ..., 1 (not
        COCO's interpolated PR): each point is what ``compute`` would report at that ``conf``.
        """
        from detforge.eval import plots  # matplotlib only when plots are asked for

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        sweep = self.curves()
        cm = np.asarray(threshold_metrics(self._matches(self.conf), self.names)["confusion"])
        paths = plots.plot_confidence_curves(sweep, self.names, save_dir)
        paths.append(plots.plot_confusion(cm, self.names, save_dir / "confusion_matrix.png", normalize=False))
        paths.append(
            plots.plot_confusion(
                normalize_rows(cm), self.names, save_dir / "confusion_matrix_normalized.png", normalize=True
            )
        )
        return paths
