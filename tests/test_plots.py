"""Plots: files exist, are valid PNGs of sensible size, show what they claim, survive empty input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detforge.eval.evaluator import Evaluator
from detforge.eval.plots import (
    GT_COLOR,
    PRED_COLOR,
    plot_confusion,
    plot_labels,
    plot_predictions,
    plot_results,
)
from detforge.records import Detections, Sample

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_shape(path: Path, min_side: int = 200) -> tuple[int, int, int]:
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and min(img.shape[:2]) >= min_side, f"{path}: {None if img is None else img.shape}"
    assert img.std() > 1.0, f"{path} is a blank image"
    return img.shape


def filled_evaluator(n_images=6):
    rng = np.random.default_rng(0)
    ev = Evaluator(["a", "b"], conf=0.3)
    for _ in range(n_images):
        xy = rng.uniform(0, 100, (3, 2))
        gb = np.concatenate([xy, xy + 30], 1)
        gl = rng.integers(0, 2, 3)
        ev.add(gb, gl, Detections(gb + rng.normal(0, 3, gb.shape), rng.uniform(0, 1, 3), gl), (200, 200))
    return ev


def test_evaluator_plots(tmp_path):
    paths = filled_evaluator().save_plots(tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {"PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png", "confusion_matrix.png",
                     "confusion_matrix_normalized.png"}
    for p in paths:
        png_shape(p)


@pytest.mark.parametrize("case", ["no_images", "no_predictions", "only_background"])
def test_evaluator_plots_with_empty_inputs(tmp_path, case):
    ev = Evaluator(["a"])
    if case == "no_predictions":
        ev.add(np.array([[0, 0, 10, 10]], float), np.array([0]), Detections.empty(), (20, 20))
    if case == "only_background":
        ev.add(np.zeros((0, 4)), np.zeros(0, int), Detections([[0, 0, 5, 5]], [0.9], [0]), (20, 20))
    for p in ev.save_plots(tmp_path):
        png_shape(p)


def test_confusion_plot_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="does not fit 2 classes"):
        plot_confusion(np.zeros((2, 2)), ["a", "b"], tmp_path / "cm.png")


def test_plot_results_grid_and_empty_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    rows = ["epoch,loss_vfl,loss_bbox,loss_giou,lr,map50_95,map50,precision,recall,f1,iou,time"]
    for e in range(1, 6):
        rows.append(f"{e},{1 / e},{2 / e},{0.5 / e},{0.01 * (6 - e)},{0.1 * e},{0.15 * e},0.5,0.4,0.45,0.6,12.5")
    csv_path.write_text("\n".join(rows) + "\n")
    h, w, _ = png_shape(plot_results(csv_path, tmp_path / "results.png"))
    assert w > h  # 10 panels in a 5-wide grid: two rows, landscape
    header_only = tmp_path / "empty.csv"
    header_only.write_text(rows[0] + "\n")
    png_shape(plot_results(header_only, tmp_path / "results_empty.png"))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        plot_results(tmp_path / "missing.csv", tmp_path / "x.png")


def test_plot_labels_and_empty(tmp_path):
    samples = [
        Sample(Path(f"{i}.jpg"), [[10, 10, 50, 60], [100, 20, 180, 200]], [0, 2], 320, 240) for i in range(5)
    ]
    samples.append(Sample(Path("bg.jpg"), np.zeros((0, 4)), [], 320, 240))
    png_shape(plot_labels(samples, ["RBC", "WBC", "Platelets"], tmp_path / "labels.png"))
    png_shape(plot_labels([], ["RBC"], tmp_path / "labels_empty.png"))
    with pytest.raises(ValueError, match=r"x\.jpg: class ids \[5\] outside 0..2"):
        plot_labels([Sample(Path("x.jpg"), [[0, 0, 1, 1]], [5], 4, 4)], ["a", "b", "c"], tmp_path / "l.png")


def test_plot_predictions_draws_gt_and_predictions(tmp_path):
    img = np.full((100, 200, 3), 128, np.uint8)
    gts = [(np.array([[20, 20, 80, 80]], float), np.array([0]))]
    dets = [Detections([[120, 20, 180, 80], [0, 0, 10, 10]], [0.9, 0.1], [1, 0])]
    out = plot_predictions([img], gts, dets, ["a", "b"], tmp_path / "pred.png", conf=0.5, tile_size=400)
    png_shape(out)
    rgb = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    # tile 400: the 200x100 image is scaled x2 and centred vertically (pad 100) under a 28 px header
    header, pad = 28, 100

    def color_at(x, y):
        return tuple(int(v) for v in rgb[header + pad + 2 * y, 2 * x])

    assert color_at(20, 50) == GT_COLOR  # left edge of the GT box
    assert color_at(180, 50) == PRED_COLOR  # right edge of the kept prediction
    assert color_at(10, 5) != PRED_COLOR  # the 0.1-score prediction is below conf: not drawn
    png_shape(plot_predictions([], [], [], ["a"], tmp_path / "none.png"), min_side=20)
    with pytest.raises(ValueError, match="RGB uint8"):
        plot_predictions([np.zeros((5, 5), np.uint8)], [gts[0]], [Detections.empty()], ["a"], tmp_path / "b.png")
