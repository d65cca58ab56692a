"""Precision / recall / F1 / IoU at one confidence threshold, and the confusion matrix.

Rules (seed 000, made exact):

- predictions with ``score < conf`` are ignored;
- within an image predictions are taken in descending score (ties keep their input order);
  a prediction is a TP when some still-unmatched GT of the SAME class has IoU > ``iou_thr``
  with it; it takes the one with the highest IoU, and that GT is matched;
- crowd regions (COCO ``iscrowd=1``) are ignore regions, as in pycocotools: a prediction that
  is not a TP but covers a crowd region of its own class, intersection / prediction area >
  ``iou_thr``, is neither TP nor FP (it is left out of every count and of the confusion matrix);
  a crowd region absorbs any number of predictions, is never a GT to find (no FN) and never
  takes a prediction that a real GT can take (real GTs are matched first). Example: crowd
  region [0, 0, 100, 100], prediction [50, 50, 150, 150]: intersection 2500 / prediction area
  10000 = 0.25, not above 0.5, so it is an FP; prediction [60, 0, 160, 100]: 4000 / 10000 = 0.4,
  an FP; prediction [0, 0, 80, 120]: 8000 / 9600 = 0.83, ignored;
- every other prediction is an FP of its class (a second prediction on an already matched GT
  included); every GT left unmatched is an FN of its class;
- confusion matrix, ``(K+1) x (K+1)``, rows = ground truth, columns = prediction, index K =
  background. Each GT lands in exactly one cell of its row and each prediction in exactly one
  cell of its column: a TP at (c, c); an FP whose best-overlap GT (over all GTs of the image,
  IoU > ``iou_thr``) has another class and stays unmatched at (gt class, predicted class) --
  that GT is then not counted again (one GT absorbs one such FP, the highest-scored); any other
  FP at (K, predicted class); any other unmatched GT at (gt class, K). So for class c:
  FP = column sum - diagonal, FN = row sum - diagonal;
- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean, IoU the mean
  IoU over TPs; each is 0 when its denominator is 0. Totals are micro-averaged (summed counts).

Because matching is greedy in descending score, the outcome of a prediction depends only on
higher-scored ones: matching once with every prediction gives the TP/FP/FN counts at every
threshold (``confidence_sweep``), used for the P/R/F1-confidence and PR curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


@dataclass
class ImageMatch:
    """The matching of one image's predictions (descending score) against its GT."""

    scores: np.ndarray  # float [P], descending
    pred_labels: np.ndarray  # int [P]
    matched_gt: np.ndarray  # int [P]: GT index a TP matched, -1 for an FP
    ious: np.ndarray  # float [P]: IoU with the matched GT, 0 for an FP
    confused_gt: np.ndarray  # int [P]: other-class GT an FP is charged against, -1 if none
    gt_labels: np.ndarray  # int [G]
    ignored: np.ndarray | None = None  # bool [P]: on a crowd region of its class, neither TP nor FP

    def __post_init__(self) -> None:
        if self.ignored is None:
            self.ignored = np.zeros(len(self.scores), dtype=bool)

    @property
    def is_tp(self) -> np.ndarray:
        return self.matched_gt >= 0

    @property
    def is_fp(self) -> np.ndarray:
        return (self.matched_gt < 0) & ~self.ignored

    @property
    def gt_matched(self) -> np.ndarray:
        hit = np.zeros(len(self.gt_labels), dtype=bool)
        hit[self.matched_gt[self.matched_gt >= 0]] = True
        return hit


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [len(a), len(b)] of xyxy boxes (float64; 0 where both boxes have zero area)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    iou = box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    return torch.nan_to_num(iou, nan=0.0).numpy()


def intersection_over_first(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)]: intersection area / area of the ``a`` box (COCO's IoU with a crowd
    region, ``a`` the predictions); 0 where an ``a`` box has no area."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def match_image(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    conf: float = 0.0,
    iou_thr: float = 0.5,
    crowd_boxes: np.ndarray | None = None,
    crowd_labels: np.ndarray | None = None,
) -> ImageMatch:
    """Apply the rules above to one image (``crowd_*``: its ignore regions, if any)."""
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = scores >= conf
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")
    boxes, scores, labels = boxes[order], scores[order], labels[order]

    n_pred, n_gt = len(scores), len(gt_labels)
    iou = pairwise_iou(boxes, gt_boxes)
    overlaps = iou > iou_thr
    matched_gt = np.full(n_pred, -1, dtype=np.int64)
    match_iou = np.zeros(n_pred, dtype=np.float64)
    gt_taken = np.zeros(n_gt, dtype=bool)
    same_class = labels[:, None] == gt_labels[None, :]
    # only predictions overlapping a same-class GT can become TPs
    for p in np.flatnonzero((overlaps & same_class).any(axis=1)):
        candidates = overlaps[p] & same_class[p] & ~gt_taken
        if candidates.any():
            g = int(np.argmax(np.where(candidates, iou[p], -1.0)))
            matched_gt[p], match_iou[p], gt_taken[g] = g, iou[p, g], True

    # predictions left unmatched on a crowd region of their class are ignored
    ignored = np.zeros(n_pred, dtype=bool)
    if crowd_boxes is not None and len(crowd_boxes) and n_pred:
        crowd_labels = np.asarray(crowd_labels, dtype=np.int64).reshape(-1)
        covers = intersection_over_first(boxes, crowd_boxes) > iou_thr
        ignored = (matched_gt < 0) & (covers & (labels[:, None] == crowd_labels[None, :])).any(axis=1)

    # confusion pairing: an FP against its best-overlap GT when that GT has another class
    confused_gt = np.full(n_pred, -1, dtype=np.int64)
    gt_absorbed = gt_taken.copy()
    for p in np.flatnonzero((matched_gt < 0) & ~ignored):
        if n_gt == 0 or not overlaps[p].any():
            continue
        g = int(np.argmax(iou[p]))
        if gt_labels[g] != labels[p] and not gt_absorbed[g]:
            confused_gt[p], gt_absorbed[g] = g, True
    return ImageMatch(scores, labels, matched_gt, match_iou, confused_gt, gt_labels, ignored)


def confusion_matrix(matches: Sequence[ImageMatch], num_classes: int) -> np.ndarray:
    """Counts [(K+1), (K+1)]: rows ground truth, columns prediction, index K background."""
    k = num_classes
    cm = np.zeros((k + 1, k + 1), dtype=np.int64)
    for m in matches:
        tp = m.is_tp
        np.add.at(cm, (m.pred_labels[tp], m.pred_labels[tp]), 1)
        confused = m.confused_gt >= 0
        np.add.at(cm, (m.gt_labels[m.confused_gt[confused]], m.pred_labels[confused]), 1)
        background = m.is_fp & ~confused
        np.add.at(cm, (np.full(int(background.sum()), k), m.pred_labels[background]), 1)
        gt_used = m.gt_matched
        gt_used[m.confused_gt[confused]] = True
        np.add.at(cm, (m.gt_labels[~gt_used], np.full(int((~gt_used).sum()), k)), 1)
    return cm


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (each GT class row sums to 1; empty rows stay 0)."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def _ratio(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num * den), where=den > 0)


def prf(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts (scalars or arrays), 0 where undefined."""
    precision = _ratio(tp, np.add(tp, fp))
    recall = _ratio(tp, np.add(tp, fn))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1


def threshold_metrics(matches: Sequence[ImageMatch], names: Sequence[str]) -> dict:
    """Totals, per-class table (without AP columns) and confusion matrix from matched images.

    The matches must come from ``match_image`` at the chosen ``conf``.
    """
    k = len(names)
    tp = np.zeros(k, np.int64)
    fp = np.zeros(k, np.int64)
    fn = np.zeros(k, np.int64)
    iou_sum = np.zeros(k, np.float64)
    instances = np.zeros(k, np.int64)
    images = np.zeros(k, np.int64)
    for m in matches:
        _check_range(m.pred_labels, k, "prediction")
        _check_range(m.gt_labels, k, "ground-truth")
        is_tp = m.is_tp
        np.add.at(tp, m.pred_labels[is_tp], 1)
        np.add.at(fp, m.pred_labels[m.is_fp], 1)
        np.add.at(iou_sum, m.pred_labels[is_tp], m.ious[is_tp])
        np.add.at(fn, m.gt_labels[~m.gt_matched], 1)
        np.add.at(instances, m.gt_labels, 1)
        images[np.unique(m.gt_labels)] += 1
    precision, recall, f1 = prf(tp, fp, fn)
    class_iou = _ratio(iou_sum, tp)
    per_class = [
        {
            "class": str(names[c]),
            "images": int(images[c]),
            "instances": int(instances[c]),
            "tp": int(tp[c]),
            "fp": int(fp[c]),
            "fn": int(fn[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "iou": float(class_iou[c]),
        }
        for c in range(k)
    ]
    t_tp, t_fp, t_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())
    p, r, f = prf(t_tp, t_fp, t_fn)
    return {
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "iou": float(_ratio(iou_sum.sum(), t_tp)),
        "tp": t_tp,
        "fp": t_fp,
        "fn": t_fn,
        "per_class": per_class,
        "confusion": confusion_matrix(matches, k).tolist(),
    }


def _check_range(labels: np.ndarray, k: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"{what} class ids must lie in 0..{k - 1}, got {np.unique(labels).tolist()}")


def confidence_sweep(
    matches: Sequence[ImageMatch], num_classes: int, confs: np.ndarray | None = None
) -> dict:
    """TP/FP/FN per class at each threshold of ``confs`` (default 0, 0.01, ..., 1).

    ``matches`` must hold every prediction (``match_image`` with conf 0, or the lowest conf of
    the sweep). Returns ``confs`` [C], ``tp``/``fp``/``fn`` [C, K] and ``precision``/``recall``/
    ``f1`` [C, K] (0 where undefined) plus ``has_preds`` [C, K] (precision is defined).
    """
    confs = np.linspace(0.0, 1.0, 101) if confs is None else np.asarray(confs, dtype=np.float64)
    k = num_classes
    # predictions ignored on crowd regions count nowhere
    counted = [~m.ignored for m in matches]
    scores = np.concatenate([m.scores[c] for m, c in zip(matches, counted)]) if matches else np.zeros(0)
    labels = (np.concatenate([m.pred_labels[c] for m, c in zip(matches, counted)]).astype(np.int64)
              if matches else np.zeros(0, np.int64))
    is_tp = np.concatenate([m.is_tp[c] for m, c in zip(matches, counted)]) if matches else np.zeros(0, bool)
    n_gt = np.zeros(k, np.int64)
    for m in matches:
        np.add.at(n_gt, m.gt_labels, 1)
    tp = np.zeros((len(confs), k), np.int64)
    n_pred = np.zeros((len(confs), k), np.int64)
    for c in range(k):
        cls_scores = np.sort(scores[labels == c])
        cls_tp_scores = np.sort(scores[(labels == c) & is_tp])
        # how many scores are >= each threshold
        n_pred[:, c] = len(cls_scores) - np.searchsorted(cls_scores, confs, side="left")
        tp[:, c] = len(cls_tp_scores) - np.searchsorted(cls_tp_scores, confs, side="left")
    fp = n_pred - tp
    fn = n_gt[None, :] - tp
    precision, recall, f1 = prf(tp, fp, fn)
    return {
        "confs": confs,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_gt": n_gt,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "has_preds": n_pred > 0,
    }


# Per-class thresholds below this keep the global conf. The sweep's F1 optimum only lands this
# low when a class is barely learned: its scores sit on the detector's noise floor (FCOS keeps
# scores from 0.001, D-FINE keeps every query), so a threshold there passes nearly every one of
# the max_det candidates (measured: ~120 boxes per image after a 1-epoch run, for a few true
# objects). 0.05 is the lowest score floor detectors commonly deploy with (e.g. torchvision's
# box_score_thresh); a class that only reaches its best F1 below it is not ready to be trusted
# with its own threshold.
CLASS_CONF_FLOOR = 0.05


def best_f1_thresholds(curves: dict, names: Sequence[str], fallback_conf: float,
                       floor: float = CLASS_CONF_FLOOR) -> list[float]:
    """One deployment threshold per class from ``confidence_sweep`` output: the confidence of
    the class's best F1 (the middle of the run of sweep points that reach it, so a flat
    optimum does not land on its lowest edge), rounded to 3 decimals. A class keeps
    ``fallback_conf`` (the global ``conf``) when it has no ground truth, when its best F1 is 0
    (a 0 threshold would pass every candidate box), or when the chosen threshold is below
    ``floor``."""
    confs = np.asarray(curves["confs"], dtype=np.float64)
    f1 = np.asarray(curves["f1"], dtype=np.float64).reshape(len(confs), -1)
    n_gt = np.asarray(curves["n_gt"]).reshape(-1)
    if f1.shape[1] != len(names) or len(n_gt) != len(names):
        raise ValueError(f"curves hold {f1.shape[1]} classes, names {len(names)}")
    chosen = []
    for c in range(len(names)):
        col = np.nan_to_num(f1[:, c], nan=0.0)
        best = float(col.max()) if len(col) else 0.0
        if n_gt[c] == 0 or best <= 0:
            chosen.append(float(fallback_conf))
            continue
        first = int(np.argmax(col))
        last = first
        while last + 1 < len(col) and col[last + 1] == best:
            last += 1
        conf = round(float(confs[(first + last) // 2]), 3)
        chosen.append(conf if conf >= floor else float(fallback_conf))
    return chosen
