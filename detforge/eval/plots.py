"""The PNGs a user looks at: confidence curves, confusion matrix, per-epoch results (one run's,
or several runs' side by side), label statistics and prediction samples.

Figures are drawn through matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch), so plotting works headless and from worker threads. Sample grids are drawn
with OpenCV, which is faster for pixels. Every function handles empty input by writing a
figure that says so, and returns the path it wrote.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detforge.records import Detections, Sample

GT_COLOR = (0, 200, 0)  # RGB green
PRED_COLOR = (30, 110, 255)  # RGB blue
MAX_LEGEND_CLASSES = 20
METRIC_COLUMNS = ("map50_95", "map50", "precision", "recall", "f1", "iou", "segm_map50_95", "segm_map50")


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.4, 4.8)) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    return fig, axes


def _save(fig: Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


# ---- confidence curves and confusion matrix -------------------------------------------------
def _defined_precision(sweep: dict) -> np.ndarray:
    return np.where(sweep["has_preds"], sweep["precision"], np.nan)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) entries; NaN where a row has none."""
    count = (~np.isnan(x)).sum(axis=1)
    total = np.nansum(x, axis=1)
    return np.divide(total, count, out=np.full(len(x), np.nan), where=count > 0)


def plot_confidence_curves(sweep: dict, names: Sequence[str], save_dir: Path) -> list[Path]:
    """PR_curve.png, F1_curve.png, P_curve.png, R_curve.png from ``confidence_sweep`` output.

    One thin line per class with ground truth and a thick mean over those classes; the F1 plot
    marks the confidence where the mean F1 peaks.
    """
    save_dir = Path(save_dir)
    confs = sweep["confs"]
    present = np.flatnonzero(sweep["n_gt"] > 0)
    legend = 0 < len(present) <= MAX_LEGEND_CLASSES
    paths = []

    fig, (ax,) = _figure()
    for c in present:
        defined = sweep["has_preds"][:, c]
        ax.plot(sweep["recall"][defined, c], sweep["precision"][defined, c], lw=1, label=names[c])
    if len(present):
        ax.plot(
            sweep["recall"][:, present].mean(axis=1),
            _nanmean_rows(_defined_precision(sweep)[:, present]),
            lw=3,
            color="blue",
            label="all classes",
        )
    else:
        _empty_note(ax, "no ground truth")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-Recall (swept conf)")
    if legend:
        ax.legend(loc="lower left", fontsize=8)
    paths.append(_save(fig, save_dir / "PR_curve.png"))

    for key, label, fname in (
        ("f1", "F1", "F1_curve.png"),
        ("precision", "Precision", "P_curve.png"),
        ("recall", "Recall", "R_curve.png"),
    ):
        fig, (ax,) = _figure()
        # precision is undefined (no predictions) at high conf: a gap, not a drop to 0
        values = _defined_precision(sweep) if key == "precision" else sweep[key]
        for c in present:
            ax.plot(confs, values[:, c], lw=1, label=names[c])
        mean = _nanmean_rows(values[:, present]) if len(present) else np.full(len(confs), np.nan)
        if not np.isnan(mean).all():
            best = int(np.nanargmax(mean))
            ax.plot(confs, mean, lw=3, color="blue", label=f"all classes {mean[best]:.3f} at {confs[best]:.2f}")
            if key == "f1":
                ax.axvline(confs[best], color="red", ls="--", lw=1)
        else:
            _empty_note(ax, "no ground truth" if not len(present) else "no predictions")
        ax.set(xlabel="Confidence", ylabel=label, xlim=(0, 1), ylim=(0, 1.02), title=f"{label}-Confidence")
        if legend:
            ax.legend(loc="lower left", fontsize=8)
        paths.append(_save(fig, save_dir / fname))
    return paths


def plot_confusion(matrix: np.ndarray, names: Sequence[str], out: Path, normalize: bool = False) -> Path:
    """Heat map of a (K+1)x(K+1) confusion matrix (rows ground truth, columns prediction)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    labels = [*names, "background"]
    if matrix.shape != (len(labels), len(labels)):
        raise ValueError(f"{out}: confusion matrix shape {matrix.shape} does not fit {len(names)} classes + background")
    side = min(4 + 0.5 * len(labels), 24)
    fig, (ax,) = _figure(size=(side + 1.5, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else max(matrix.max(), 1))
    fig.colorbar(image, ax=ax, shrink=0.8)
    if len(labels) <= 30:
        ax.set_xticks(range(len(labels)), labels, rotation=90)
        ax.set_yticks(range(len(labels)), labels)
        threshold = (1 if normalize else max(matrix.max(), 1)) / 2
        for i in range(len(labels)):
            for j in range(len(labels)):
                value = matrix[i, j]
                if value:
                    ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}", ha="center", va="center",
                            fontsize=8, color="white" if value > threshold else "black")
    ax.set(xlabel="Predicted", ylabel="Ground truth",
           title="Confusion matrix" + (" (row-normalised)" if normalize else " (counts)"))
    return _save(fig, out)


# ---- per-epoch results ----------------------------------------------------------------------
def _read_numeric_csv(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metrics CSV not found")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, np.ndarray] = {}
    for name in rows[0].keys() if rows else []:
        if name is None:
            raise ValueError(f"{path}: a row has more fields than the header")
        try:
            columns[name.strip()] = np.array([float(r[name]) if r[name] not in ("", None) else np.nan for r in rows])
        except ValueError:
            continue  # text columns (e.g. a timestamp) are not plotted
    return columns


def plot_results(metrics_csv: Path, out: Path) -> Path:
    """Grid of per-epoch curves from the run's metrics.csv: every loss column, lr, then
    map50_95, map50, precision, recall, f1, iou and, for mask models, segm_map50_95 and
    segm_map50 (those present)."""
    columns = _read_numeric_csv(metrics_csv)
    losses = [c for c in columns if "loss" in c.lower()]
    lrs = [c for c in columns if c.lower() == "lr" or c.lower().startswith("lr/") or c.lower().startswith("lr_")]
    shown = losses + lrs + [c for c in METRIC_COLUMNS if c in columns]
    n = max(len(shown), 1)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, cols, size=(3.2 * cols, 2.6 * rows))
    x = columns.get("epoch")
    for ax, name in zip(axes, shown):
        y = columns[name]
        xs = x if x is not None else np.arange(1, len(y) + 1)
        ax.plot(xs, y, marker="o", ms=3, lw=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
    if not shown:
        _empty_note(axes[0], "no epochs recorded yet")
    for ax in axes[len(shown):] if shown else axes[1:]:
        ax.set_visible(False)
    return _save(fig, out)


def plot_run_curves(curves: dict[str, list[dict[str, float]]], out: Path) -> Path:
    """Several runs' validated epochs (``detforge.eval.curves.read_curve``, keyed by run label)
    on shared axes: mAP50-95 with the last ``SWING_EPOCHS`` epochs drawn thicker, and mAP50 with
    each run's exit epoch (first past half its final mAP50) ringed, so seeds that start late or
    still climb at the end stand out."""
    from detforge.eval.curves import SWING_EPOCHS, curve_figures

    fig, axes = _figure(1, 2, size=(11.0, 4.2))
    drawn = [(label, c) for label, c in curves.items() if c]
    for label, curve in drawn:
        epochs = [c["epoch"] for c in curve]
        line, = axes[0].plot(epochs, [c["map50_95"] for c in curve], lw=1.2, label=label)
        tail = curve[-SWING_EPOCHS:]
        axes[0].plot([c["epoch"] for c in tail], [c["map50_95"] for c in tail], lw=3.0, color=line.get_color())
        axes[1].plot(epochs, [c["map50"] for c in curve], lw=1.2, color=line.get_color())
        exit_epoch = curve_figures(curve).get("exit_epoch")
        if exit_epoch is not None:
            hit = next(c for c in curve if c["epoch"] == exit_epoch)
            axes[1].plot([exit_epoch], [hit["map50"]], "o", ms=9, mfc="none", color=line.get_color())
    axes[0].set_title(f"mAP50-95 (last {SWING_EPOCHS} validated epochs thick)", fontsize=10)
    axes[1].set_title("mAP50 (ring: first epoch past half the final)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch", fontsize=9)
        ax.grid(alpha=0.3)
    if drawn:
        axes[0].legend(fontsize=8, loc="upper left")
    else:
        _empty_note(axes[0], "no validated epochs")
    return _save(fig, out)


# ---- label statistics -----------------------------------------------------------------------
def plot_labels(samples: Sequence[Sample], names: Sequence[str], out: Path) -> Path:
    """Class counts, box width/height (relative to the image), box centres, and box size in
    pixels (sqrt of area, with COCO's small/medium/large limits 32 and 96 marked)."""
    k = len(names)
    counts = np.zeros(k, np.int64)
    rel_wh, centres, sizes = [], [], []
    for s in samples:
        if s.labels.size and (s.labels.min() < 0 or s.labels.max() >= k):
            raise ValueError(f"{s.image_path}: class ids {np.unique(s.labels).tolist()} outside 0..{k - 1}")
        np.add.at(counts, s.labels, 1)
        if len(s.boxes):
            w = s.boxes[:, 2] - s.boxes[:, 0]
            h = s.boxes[:, 3] - s.boxes[:, 1]
            iw, ih = max(s.width, 1), max(s.height, 1)
            rel_wh.append(np.stack([w / iw, h / ih], 1))
            centres.append(np.stack([(s.boxes[:, 0] + w / 2) / iw, (s.boxes[:, 1] + h / 2) / ih], 1))
            sizes.append(np.sqrt(np.clip(w * h, 0, None)))
    fig, axes = _figure(2, 2, size=(10, 8))
    ax = axes[0]
    ax.bar(range(k), counts, color="tab:blue")
    ax.set_xticks(range(k), names, rotation=90 if k > 8 else 0, fontsize=8 if k > 8 else 10)
    ax.set(ylabel="instances", title=f"class counts ({int(counts.sum())} boxes, {len(samples)} images)")
    if rel_wh:
        wh = np.concatenate(rel_wh)
        xy = np.concatenate(centres)
        axes[1].hist2d(wh[:, 0], wh[:, 1], bins=50, range=[[0, 1], [0, 1]], cmap="viridis", cmin=1)
        axes[2].hist2d(xy[:, 0], xy[:, 1], bins=50, range=[[0, 1], [0, 1]], cmap="viridis", cmin=1)
        axes[2].invert_yaxis()  # image coordinates: y grows downward
        axes[3].hist(np.concatenate(sizes), bins=50, color="tab:blue")
        for limit in (32, 96):
            axes[3].axvline(limit, color="red", ls="--", lw=1)
    else:
        for ax in axes[1:]:
            _empty_note(ax, "no boxes")
    axes[1].set(xlabel="width / image width", ylabel="height / image height", title="box width vs height")
    axes[2].set(xlabel="x centre / image width", ylabel="y centre / image height", title="box centres")
    axes[3].set(xlabel="sqrt(box area) px", ylabel="boxes", title="box size (32, 96: COCO small/medium/large)")
    return _save(fig, out)


# ---- prediction samples ---------------------------------------------------------------------
def _draw_boxes(img: np.ndarray, boxes, labels, names, color, scores=None) -> None:
    thickness = max(1, round(min(img.shape[:2]) / 250))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        name = names[label] if 0 <= label < len(names) else f"id {label}"
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(y1 - th - 4, 0)
        cv2.rectangle(img, (x1, top), (x1 + tw + 2, top + th + 4), color, -1)
        cv2.putText(img, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


def _tile(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    h, w = image.shape[:2]
    scale = size / max(h, w, 1)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    tile = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    tile[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return tile, scale, left, top


def _tint(tile: np.ndarray, mask: np.ndarray, scale: float, dx: int, dy: int, color, alpha: float = 0.4) -> None:
    """Blend ``color`` into ``tile`` over ``mask`` (in image pixels, placed as ``_tile`` placed the image)."""
    h, w = mask.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    m = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    region = tile[dy:dy + nh, dx:dx + nw]
    region[m] = (region[m] * (1 - alpha) + np.array(color, np.float32) * alpha + 0.5).astype(np.uint8)


def plot_predictions(
    images: Sequence[np.ndarray],
    gts: Sequence[tuple[np.ndarray, np.ndarray]],
    dets: Sequence[Detections],
    names: Sequence[str],
    out: Path,
    conf: float = 0.5,
    tile_size: int = 480,
) -> Path:
    """Grid of images (RGB uint8) with ground truth in green and predictions with
    ``score >= conf`` in blue, labelled with class and score (their masks tinted blue when
    the detections carry masks)."""
    if not (len(images) == len(gts) == len(dets)):
        raise ValueError(f"{out}: {len(images)} images, {len(gts)} ground truths, {len(dets)} detections")
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    header = 28
    canvas = np.full((header + rows * tile_size, cols * tile_size, 3), 255, np.uint8)
    title = f"ground truth (green), predictions conf>={conf:.2f} (blue)" if n else "no images"
    cv2.putText(canvas, title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (image, (gt_boxes, gt_labels), det) in enumerate(zip(images, gts, dets)):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{out}: image {i} must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
        tile, scale, dx, dy = _tile(image, tile_size)
        offset = np.array([dx, dy, dx, dy], np.float64)
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4) * scale + offset
        _draw_boxes(tile, gt_boxes, np.asarray(gt_labels, np.int64).reshape(-1), names, GT_COLOR)
        shown = det.above(conf)
        if shown.masks is not None and len(shown.masks):
            _tint(tile, shown.masks.any(0), scale, dx, dy, PRED_COLOR)
        _draw_boxes(tile, shown.boxes * scale + offset, shown.labels, names, PRED_COLOR, shown.scores)
        r, c = divmod(i, cols)
        canvas[header + r * tile_size: header + (r + 1) * tile_size, c * tile_size:(c + 1) * tile_size] = tile
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{out}: could not write the PNG")
    return out
