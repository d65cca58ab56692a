"""YOLOv3 family: parameter counts and layout of the Darknet cfgs, Darknet .weights reading and
writing, anchor fitting and best possible recall, target assignment, loss, ASFF, deploy, ONNX
export and a small overfit."""

from __future__ import annotations

import io
import logging
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detforge.config import build_config
from detforge.models.yolov3 import YOLOv3, best_possible_recall, fit_anchors, load_darknet_weights, save_darknet_weights
from detforge.models.yolov3.anchors import as_anchor_array, default_anchors, mean_best_iou
from detforge.models.yolov3.asff import ASFF
from detforge.models.yolov3.assigner import assign_anchors
from detforge.models.yolov3.loss import smoothed_class_targets
from detforge.models.yolov3.options import prepare_anchors, yolov3_options
from detforge.models.yolov3.recipe import yolov3_recipe
from detforge.models.zoo import available, build_model, get_spec
from detforge.records import Sample

sys.path.insert(0, str(Path(__file__).parent))
from conftest import BCCD  # noqa: E402
from dense_helpers import check_postprocess_matches_export, synthetic_rectangles as _synthetic_rectangles, targets as _targets  # noqa: E402

# Parameters at 80 classes of Darknet's cfg files, counted with the parser below from
# cfg/yolov3.cfg, cfg/yolov3-spp.cfg and cfg/yolov3-tiny.cfg of pjreddie/darknet (blobs 938ffff,
# 4ad2a05, cfca3cf): per [convolutional], filters x input channels x size^2 weights, plus 2 x
# filters (BN scale and bias) with batch_normalize=1 or filters (conv bias) without; input
# channels follow [route] (sum of the routed layers), [shortcut], [maxpool] and [upsample].
# (The YOLOv3 paper's table and Darknet's own summary give 61.9M for yolov3.)
DARKNET_CFG_PARAMS = {"yolov3": 61_949_149, "yolov3-spp": 62_998_749, "yolov3-tiny": 8_852_366}
# Darknet sections (layers 0..N-1) of those files
DARKNET_CFG_SECTIONS = {"yolov3": 107, "yolov3-spp": 114, "yolov3-tiny": 24}
# a .weights file holds 20 header bytes and 4 bytes per value; these are the sizes of the
# published COCO files (yolov3.weights 236.52 MiB, yolov3-tiny.weights 33.79 MiB)
DARKNET_FILE_BYTES = {"yolov3": 248_007_048, "yolov3-tiny": 35_434_956}


def parse_cfg(text: str) -> list[dict[str, str]]:
    sections: list[dict[str, str]] = []
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append({"type": line[1:-1]})
        else:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
    return sections


def cfg_conv_shapes(text: str) -> list[tuple[int, int, int, bool]]:
    """(filters, input channels, size, batch_normalize) of each [convolutional], in order."""
    channels, shapes, c = [], [], 3
    layers = parse_cfg(text)[1:]  # [net] first
    for i, s in enumerate(layers):
        kind = s["type"]
        if kind == "convolutional":
            shapes.append((int(s["filters"]), c, int(s["size"]), s.get("batch_normalize", "0") == "1"))
            c = int(s["filters"])
        elif kind == "route":
            refs = [int(v) for v in s["layers"].split(",")]
            c = sum(channels[r if r >= 0 else i + r] for r in refs)
        channels.append(c)  # shortcut, maxpool, upsample, yolo keep the channel count
    return shapes


def cfg_params(text: str) -> int:
    return sum(f * c * k * k + (2 * f if bn else f) for f, c, k, bn in cfg_conv_shapes(text))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)


# ---------------------------------------------------------------- sizes and the cfg layout
def test_registered_with_the_darknet_cfg_parameter_counts():
    assert {"yolov3", "yolov3-spp", "yolov3-tiny"} <= set(available())
    for name, expected in DARKNET_CFG_PARAMS.items():
        model = build_model(name, num_classes=80)
        assert n_params(model) == expected, name
        cfg = model.darknet_layout().to_cfg(416, 416)
        assert cfg_params(cfg) == expected, name  # the cfg we write describes the same network
        assert len(parse_cfg(cfg)) - 1 == DARKNET_CFG_SECTIONS[name]
        assert get_spec(name).load_weights is not None and get_spec(name).prepare is not None
    # only the output convs depend on the class count: (input channels + bias) x 3 anchors per class
    assert n_params(build_model("yolov3", num_classes=3)) == 61_949_149 - 77 * 3 * (1024 + 512 + 256 + 3)
    assert n_params(build_model("yolov3-tiny", num_classes=3)) == 8_852_366 - 77 * 3 * (512 + 256 + 2)


def test_written_cfg_has_darknets_routes_masks_and_anchors():
    sections = parse_cfg(YOLOv3(80, "yolov3").darknet_layout().to_cfg(416, 416))[1:]
    routes = [s["layers"] for s in sections if s["type"] == "route"]
    assert routes == ["-4", "-1, 61", "-4", "-1, 36"]
    yolos = [s for s in sections if s["type"] == "yolo"]
    assert [s["mask"] for s in yolos] == ["6,7,8", "3,4,5", "0,1,2"]
    assert yolos[0]["anchors"].replace(" ", "") == "10,13,16,30,33,23,30,61,62,45,59,119,116,90,156,198,373,326"
    assert [i for i, s in enumerate(sections) if s["type"] == "yolo"] == [82, 94, 106]
    spp = parse_cfg(YOLOv3(80, "yolov3-spp").darknet_layout().to_cfg(416, 416))[1:]
    assert [s["size"] for s in spp if s["type"] == "maxpool"] == ["5", "9", "13"]
    assert [s["layers"] for s in spp if s["type"] == "route"][:3] == ["-2", "-4", "-1, -3, -5, -6"]
    tiny = parse_cfg(YOLOv3(80, "yolov3-tiny").darknet_layout().to_cfg(416, 416))[1:]
    assert [(s["size"], s["stride"]) for s in tiny if s["type"] == "maxpool"] == [("2", "2")] * 5 + [("2", "1")]
    assert [s["layers"] for s in tiny if s["type"] == "route"] == ["-4", "-1, 8"]
    assert [s["mask"] for s in tiny if s["type"] == "yolo"] == ["3,4,5", "0,1,2"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown YOLOv3 size 'yolov3-x'"):
        YOLOv3(3, size="yolov3-x")
    with pytest.raises(ValueError, match="takes 6 anchors"):
        YOLOv3(3, size="yolov3-tiny", anchors=[10, 14, 23, 27])
    model = YOLOv3(2, "yolov3-tiny")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 3, 100, 96))
    model.train()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        model(torch.rand(1, 3, 64, 64), [_targets([[0, 0, 20, 20]], [5])])


def test_darknet_maxpool_size2_stride1_keeps_the_size_and_pads_right():
    pool = YOLOv3(1, "yolov3-tiny").backbone.pools[5]
    x = torch.tensor([[1.0, 5.0, 2.0], [0.0, 3.0, 7.0], [4.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    # each window is the cell, its right, lower and lower-right neighbours (those that exist)
    assert pool(x).view(3, 3).tolist() == [[5.0, 7.0, 7.0], [4.0, 7.0, 7.0], [4.0, 1.0, 0.0]]


# ---------------------------------------------------------------- Darknet .weights
def test_darknet_weights_round_trip_and_the_published_file_sizes(tmp_path):
    model = YOLOv3(80, "yolov3-tiny")
    _randomise_bn(model)
    path = save_darknet_weights(model, tmp_path / "tiny.weights", seen=123)
    assert path.stat().st_size == DARKNET_FILE_BYTES["yolov3-tiny"]
    other = YOLOv3(80, "yolov3-tiny")
    report = load_darknet_weights(other, path)
    assert report["header"] == {"major": 0, "minor": 2, "revision": 0, "seen": 123}
    assert report["loaded_convs"] == report["total_convs"] == 13 and report["skipped_convs"] == 0
    mine, theirs = model.state_dict(), other.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.endswith("num_batches_tracked"))
    # the yolov3 file size follows from the layout alone (no 248 MB write in a unit test)
    values = sum(f * c * k * k + (4 * f if bn else f)
                 for f, c, k, bn in cfg_conv_shapes(YOLOv3(80, "yolov3").darknet_layout().to_cfg(416, 416)))
    assert 20 + 4 * values == DARKNET_FILE_BYTES["yolov3"]


def _write_file_from_cfg(cfg_text: str, path: Path, old_header: bool = False) -> list[tuple[int, int, int, bool]]:
    """A .weights file written from the cfg alone: conv i's BN beta, gamma, mean, var are
    i + 0.1 .. i + 0.4 (bias i + 0.1 without BN), its weights i + 0.5."""
    shapes = cfg_conv_shapes(cfg_text)
    header = np.array([0, 1, 0, 7], np.int32).tobytes() if old_header else (
        np.array([0, 2, 5], np.int32).tobytes() + np.array([7], np.int64).tobytes())
    parts = [header]
    for i, (f, c, k, bn) in enumerate(shapes):
        for j in range(4 if bn else 1):
            parts.append(np.full(f, i + 0.1 * (j + 1), np.float32).tobytes())
        parts.append(np.full(f * c * k * k, i + 0.5, np.float32).tobytes())
    path.write_bytes(b"".join(parts))
    return shapes


@pytest.mark.parametrize("old_header", [False, True])
def test_reads_a_file_written_from_the_cfg_layout(tmp_path, old_header):
    cfg = YOLOv3(80, "yolov3-tiny").darknet_layout().to_cfg(416, 416)
    _write_file_from_cfg(cfg, tmp_path / "cfg.weights", old_header)
    model = YOLOv3(80, "yolov3-tiny")
    report = load_darknet_weights(model, tmp_path / "cfg.weights")
    assert report["header"]["seen"] == 7 and report["file_classes"] == 80
    # cfg conv order: 7 backbone convs (0-6), 1x1 to 256 (7), 3x3 512 (8), output (9),
    # lateral 1x1 128 (10), 3x3 256 (11), output (12)
    expect = {0: model.backbone.convs[0], 6: model.backbone.convs[6], 7: model.neck.reduce, 8: model.head.convs[0],
              10: model.neck.lateral, 11: model.head.convs[1]}
    for i, m in expect.items():
        assert torch.all(m.bn.bias == np.float32(i + 0.1)) and torch.all(m.bn.weight == np.float32(i + 0.2))
        assert torch.all(m.bn.running_mean == np.float32(i + 0.3)) and torch.all(m.bn.running_var == np.float32(i + 0.4))
        assert torch.all(m.conv.weight == np.float32(i + 0.5))
    for i, pred in ((9, model.head.preds[0]), (12, model.head.preds[1])):
        assert torch.all(pred.bias == np.float32(i + 0.1)) and torch.all(pred.weight == np.float32(i + 0.5))


def test_class_count_change_keeps_all_but_the_output_convs(tmp_path, caplog):
    cfg = YOLOv3(80, "yolov3-tiny").darknet_layout().to_cfg(416, 416)
    _write_file_from_cfg(cfg, tmp_path / "coco.weights")
    model = YOLOv3(3, "yolov3-tiny", asff=True)
    before = [p.detach().clone() for p in model.head.preds.parameters()]
    with caplog.at_level(logging.INFO, logger="detforge"):
        report = get_spec("yolov3-tiny").load_weights(model, str(tmp_path / "coco.weights"))
    assert report["file_classes"] == 80 and report["loaded_convs"] == 11 and report["skipped_convs"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.head.preds.parameters()))
    assert torch.all(model.head.convs[1].conv.weight == np.float32(11.5))  # the conv after a skipped output conv
    assert "loaded 11/13 convs" in caplog.text and "skipped the 2 output convs (file: 80 classes, model: 3)" in caplog.text
    assert "ASFF (1005060 params)" in caplog.text


def test_bad_weights_files_are_refused(tmp_path):
    model = YOLOv3(80, "yolov3-tiny")
    path = save_darknet_weights(model, tmp_path / "t.weights")
    (tmp_path / "cut.weights").write_bytes(path.read_bytes()[:-400])
    with pytest.raises(ValueError, match=r"cut\.weights: .* do not fit yolov3-tiny"):
        load_darknet_weights(model, tmp_path / "cut.weights")
    with pytest.raises(ValueError, match=r"t\.weights: .* do not fit yolov3 \("):
        load_darknet_weights(YOLOv3(80, "yolov3"), path)  # a tiny file for the full model
    (tmp_path / "short.weights").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="too short"):
        load_darknet_weights(model, tmp_path / "short.weights")
    with pytest.raises(ValueError, match="ASFF layers have no Darknet form"):
        save_darknet_weights(YOLOv3(80, "yolov3-tiny", asff=True), tmp_path / "asff.weights")


# ---------------------------------------------------------------- anchors
def test_fit_anchors_recovers_hand_made_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[12, 12], [40, 20], [24, 60], [90, 90], [150, 60], [60, 180]], np.float64)
    wh = np.concatenate([c * rng.uniform(0.92, 1.08, (40, 2)) for c in centres])
    fitted = fit_anchors(wh / 320, 6, 320)  # fractions of a 320 px input
    order = np.argsort(centres.prod(1))
    assert fitted.shape == (6, 2) and np.all(np.diff(fitted.prod(1)) > 0)  # sorted by area
    assert np.abs(fitted / centres[order] - 1).max() < 0.04
    # same input, same anchors
    assert np.array_equal(fitted, fit_anchors(wh / 320, 6, 320))
    with pytest.raises(ValueError, match="cannot give 6 anchors"):
        fit_anchors(np.array([[0.1, 0.1], [0.2, 0.3]]), 6, 320)


def test_best_possible_recall_and_mean_iou_hand_cases():
    wh = np.array([[10.0, 10], [50, 50], [200, 10], [30, 20]])
    anchors = np.array([[10.0, 10]])
    # ratios: 1 (kept); 5 (> 4, lost); 20 in w (lost); 3 and 2 (kept) -> 2 of 4
    assert best_possible_recall(wh, anchors) == 0.5
    assert best_possible_recall(wh, np.array([[10.0, 10], [50, 50], [100, 10]])) == 1.0
    # IoU on a common centre: 1, 100/2500, 100/2000, 100/600
    assert mean_best_iou(wh, anchors) == pytest.approx((1 + 0.04 + 0.05 + 1 / 6) / 4)


def test_anchor_option_parsing_and_default_scaling():
    assert np.allclose(default_anchors(9, 832)[0], [20, 26])  # 10x13 at 416 -> x2
    assert as_anchor_array([30, 30, 10, 10, 20, 20, 5, 5, 40, 40, 1, 1], 6)[:, 0].tolist() == [1, 5, 10, 20, 30, 40]
    cfg = build_config({"model": "yolov3-tiny", "anchors": "10,14, 23,27, 37,58, 81,82, 135,169, 344,319",
                        "asff": True, "label_smoothing": 0.01, "imgsz": 320})
    options = yolov3_options(cfg)
    assert options == {"label_smoothing": 0.01, "asff": True, "imgsz": 320,
                       "anchors": [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]}
    model = build_model("yolov3-tiny", 3, **options)
    assert model.anchors[0].tolist() == [10, 14] and model.asff is not None
    assert build_model("yolov3", 3, **yolov3_options(build_config({"imgsz": 640}))).anchors[-1].tolist() == \
        pytest.approx([373 * 640 / 416, 326 * 640 / 416])
    with pytest.raises(Exception, match="even count"):
        build_config({"anchors": "10,13,16"})


def test_prepare_fits_anchors_to_the_train_boxes_and_reports_recall(caplog):
    rng = np.random.default_rng(1)
    samples = []
    for i in range(30):  # 640x480 images; boxes of three shapes, stretched to 320x320 later
        wh = np.array([[32, 24], [96, 48], [160, 192]])[i % 3] * rng.uniform(0.95, 1.05, 2)
        x0, y0 = rng.uniform(0, 300), rng.uniform(0, 200)
        samples.append(Sample(f"img{i}.jpg", [[x0, y0, x0 + wh[0], y0 + wh[1]]], [0], 640, 480))
    cfg = build_config({"model": "yolov3-tiny", "anchors": "auto", "imgsz": 320})
    with caplog.at_level(logging.INFO, logger="detforge"):
        extra = get_spec("yolov3-tiny").prepare(cfg, samples)
    anchors = np.array(extra["anchors"]).reshape(6, 2)
    # every box's stretched size (x 0.5 in w, x 2/3 in h) is matched by an anchor within 6 %
    for w, h in [(16, 16), (48, 32), (80, 128)]:
        assert np.abs(anchors / [w, h] - 1).max(1).min() < 0.06
    assert "best possible recall" in caplog.text and "anchors=auto: k-means" in caplog.text
    # the default anchors at 320: the check is reported, no anchors returned
    assert prepare_anchors(build_config({"imgsz": 320}), samples, 6) == {}


# ---------------------------------------------------------------- targets and loss
def test_assignment_best_anchor_plus_threshold_and_smaller_box_wins():
    anchors = torch.tensor([[10.0, 10], [20, 20], [40, 40], [80, 80], [160, 160], [320, 320]])  # tiny-like
    shapes = [(4, 4), (8, 8)]  # 128 px input: stride 32 and 16 levels, coarse first
    # box A: 20x20 at centre (24, 24): best anchor 1 (IoU 1); anchor 0 IoU 0.25, anchor 2 0.25 -> both too
    # box B: 10x10 at the same centre: best anchor 0 (IoU 1); anchor 1 IoU 0.25 -> shared with A
    boxes = torch.tensor([[14.0, 14, 34, 34], [19.0, 19, 29, 29]])
    pos = assign_anchors(boxes, torch.tensor([0, 1]), torch.ones(2), torch.tensor([0, 0]), anchors, 3, [32, 16], shapes)
    fine, coarse = pos[1], pos[0]
    assert len(coarse.batch) == 0  # anchors 3..5 (coarse level) are far from both
    got = sorted(zip(fine.anchor.tolist(), fine.gy.tolist(), fine.gx.tolist(), fine.labels.tolist()))
    # cell (1, 1) at stride 16; anchors 0 and 1 are wanted by both boxes: the smaller box (label 1)
    # gets them; anchor 2 only by A
    assert got == [(0, 1, 1, 1), (1, 1, 1, 1), (2, 1, 1, 0)]
    # a box larger than every anchor still gets its best one; an empty batch gets none
    big = assign_anchors(torch.tensor([[0.0, 0, 128, 128]]), torch.tensor([0]), torch.ones(1), torch.tensor([0]),
                         anchors, 3, [32, 16], shapes)
    # 128x128: best anchor 160x160 (IoU 0.64), 80x80 also passes (0.39), 320x320 not (0.16):
    # both in the coarse level (anchors 3-5), slots 1 and 0, cell (2, 2) at stride 32
    assert [len(p.batch) for p in big] == [2, 0] and sorted(big[0].anchor.tolist()) == [0, 1]
    assert big[0].gx.tolist() == [2, 2] and big[0].gy.tolist() == [2, 2]
    none = assign_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                          torch.zeros(0, dtype=torch.long), anchors, 3, [32, 16], shapes)
    assert [len(p.batch) for p in none] == [0, 0]


def test_label_smoothing_targets_follow_the_bag_of_freebies_formula():
    t = smoothed_class_targets(torch.tensor([2, 0]), 5, 0.1)
    # true class 1 - eps, the others eps / (K - 1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.9, 0.025, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert smoothed_class_targets(torch.tensor([0]), 1, 0.1).tolist() == [[pytest.approx(0.9)]]
    assert torch.equal(smoothed_class_targets(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))


def test_background_only_batch_gives_the_prior_objectness_loss():
    torch.manual_seed(0)
    model = YOLOv3(3, "yolov3-tiny").train()
    with torch.no_grad():  # every output becomes its bias: the objectness prior
        for pred in model.head.preds:
            pred.weight.zero_()
    losses = model(torch.rand(2, 3, 64, 64), [_targets([], []), _targets([], [])])
    assert losses["loss_box"].item() == 0 and losses["loss_cls"].item() == 0
    # per level: balance x BCE(prior, 0) = balance x log(1 + 8 / (640 / stride)^2), gain 1
    expected = 0.4 * math.log(1 + 8 / 20**2) + 1.0 * math.log(1 + 8 / 40**2)
    assert losses["loss_obj"].item() == pytest.approx(expected, rel=1e-4)  # float32 BCE
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_terms_mixup_weights_and_ignore_rule():
    torch.manual_seed(0)
    model = YOLOv3(2, "yolov3-tiny").train()
    images = torch.rand(1, 3, 128, 128)
    boxes, labels = [[8, 8, 40, 40], [60, 50, 120, 126]], [0, 1]
    full = model(images, [_targets(boxes, labels, [1.0, 1.0])])
    half = model(images, [_targets(boxes, labels, [0.5, 0.5])])
    assert set(full) == {"loss_box", "loss_obj", "loss_cls"}
    # box and class terms are means over positives of weighted terms: they halve
    assert half["loss_box"].item() == pytest.approx(full["loss_box"].item() / 2, rel=1e-5)
    assert half["loss_cls"].item() == pytest.approx(full["loss_cls"].item() / 2, rel=1e-5)
    assert half["loss_obj"].item() < full["loss_obj"].item()
    smooth = YOLOv3(2, "yolov3-tiny", label_smoothing=0.1)
    smooth.load_state_dict(model.state_dict())
    smoothed = smooth.train()(images, [_targets(boxes, labels)])
    assert smoothed["loss_box"].item() == pytest.approx(full["loss_box"].item(), rel=1e-6)
    assert smoothed["loss_cls"].item() != pytest.approx(full["loss_cls"].item(), rel=1e-3)


def test_objectness_ignores_unassigned_predictions_that_already_cover_an_object():
    # 64 px input, one class: stride 32 (2x2 cells, anchors 80, 160, 320) and stride 16 (4x4,
    # anchors 10, 20, 40). All raw outputs 0 (every BCE is log 2), except the 320 px anchor of
    # the stride-32 cell (1, 1), moved onto the ground truth: a 40 px box centred at (40, 40).
    # Its shape IoU with 320x320 is 0.016, so it is not assigned (40 and 20 px at stride 16 are);
    # its decoded box equals the object, IoU 1 > 0.7: Darknet leaves it out of the loss.
    model = YOLOv3(1, "yolov3-tiny", anchors=[10, 10, 20, 20, 40, 40, 80, 80, 160, 160, 320, 320])
    coarse, fine = torch.zeros(1, 18, 2, 2), torch.zeros(1, 18, 4, 4)
    coarse[0, 12, 1, 1] = coarse[0, 13, 1, 1] = -math.log(3)  # sigmoid = 0.25: centre (1.25 * 32)
    coarse[0, 14, 1, 1] = coarse[0, 15, 1, 1] = math.log(40 / 320)
    target = [_targets([[20, 20, 60, 60]], [0])]
    crit = model.criterion
    log2 = math.log(2)
    assert crit([coarse, fine], target, model.anchors)["loss_obj"].item() == pytest.approx(0.4 * log2 * 11 / 12 + log2, rel=1e-6)
    crit.ignore_thr = 1.01  # nothing ignored
    assert crit([coarse, fine], target, model.anchors)["loss_obj"].item() == pytest.approx(0.4 * log2 + log2, rel=1e-6)


def test_asff_weights_sum_to_one_per_pixel_and_parameter_counts():
    torch.manual_seed(0)
    for channels, sizes in (((512, 256, 128), (4, 8, 16)), ((256, 384), (4, 8))):
        asff = ASFF(channels).eval()
        with torch.no_grad():
            for m in asff.modules():  # spread the logits so the weights differ per pixel
                if isinstance(m, torch.nn.Conv2d) and m.out_channels == len(channels):
                    m.weight.normal_(0, 1.0)
        feats = [torch.randn(2, c, s, s) for c, s in zip(channels, sizes)]
        with torch.no_grad():
            out = asff(feats)
            for level, (c, s) in enumerate(zip(channels, sizes)):
                weights, resized = asff.levels[level].weights_and_inputs(feats)
                assert weights.shape == (2, len(channels), s, s)
                assert torch.allclose(weights.sum(1), torch.ones(2, s, s), atol=1e-6)
                assert weights.min() > 0 and weights.std() > 0.05
                assert all(r.shape == (2, c, s, s) for r in resized)
                assert out[level].shape == (2, c, s, s)
                assert torch.allclose(out[level], sum(weights[:, i:i + 1] * r for i, r in enumerate(resized)), atol=1e-5)

    def conv(cin, cout, k):  # conv + BN scale and bias
        return cin * cout * k * k + 2 * cout

    def weight_layers(c, levels):  # 1x1 to 16 per level, 1x1 16L -> L logits with bias
        return levels * conv(c, 16, 1) + 16 * levels * levels + levels

    full = (conv(256, 512, 3) + conv(128, 512, 3) + weight_layers(512, 3)  # into stride 32
            + conv(512, 256, 1) + conv(128, 256, 3) + weight_layers(256, 3)  # into stride 16
            + conv(512, 128, 1) + conv(256, 128, 1) + weight_layers(128, 3))  # into stride 8
    tiny = conv(384, 256, 3) + weight_layers(256, 2) + conv(256, 384, 1) + weight_layers(384, 2)
    assert (full, tiny) == (2_341_081, 1_005_060)
    for name, extra in (("yolov3", full), ("yolov3-spp", full), ("yolov3-tiny", tiny)):
        assert n_params(YOLOv3(80, name, asff=True)) - n_params(YOLOv3(80, name)) == extra


def test_asff_model_trains_every_parameter():
    torch.manual_seed(0)
    model = YOLOv3(2, "yolov3-tiny", asff=True).train()
    losses = model(torch.rand(2, 3, 64, 64), [_targets([[4, 4, 30, 40]], [1]), _targets([[10, 20, 60, 60]], [0])])
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def _peaked_model(name: str = "yolov3-tiny", num_classes: int = 3, imgsz: int = 416, asff: bool = False) -> YOLOv3:
    """Random weights with realistic BN statistics and larger outputs, so scores spread and NMS
    has work to do."""
    torch.manual_seed(0)
    model = YOLOv3(num_classes, name, imgsz=imgsz, asff=asff)
    _randomise_bn(model)
    model.eval()
    with torch.no_grad():
        for pred in model.head.preds:
            pred.weight.normal_(0, 0.05)
            pred.bias.zero_()
    return model


def test_postprocess_sorted_clipped_and_same_as_export_forward():
    check_postprocess_matches_export(_peaked_model(imgsz=128), 96, 128, nms_iou=0.6)


def test_deploy_fuses_batchnorm_and_keeps_outputs():
    model = _peaked_model("yolov3-tiny", asff=True)
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model(images)
        model.deploy()
        after = model(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


def _bccd_or_synthetic_images(count: int, size: int) -> tuple[torch.Tensor, str]:
    files = sorted((BCCD / "JPEGImages").glob("*.jpg"))[:count]
    if len(files) < count:
        images, _ = _synthetic_rectangles(count, size)
        return images, "synthetic"
    arrays = [cv2.cvtColor(cv2.resize(cv2.imread(str(f)), (size, size)), cv2.COLOR_BGR2RGB) for f in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255, "bccd"


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_export_with_nms_equals_torch_on_bccd_images():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _peaked_model("yolov3-tiny", asff=True).deploy()

    class ExportWrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.export_forward(x, max_det=100)

    wrapper = ExportWrapper(model).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(wrapper, torch.rand(1, 3, 320, 320), buf, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    images, source = _bccd_or_synthetic_images(2, 416)  # a size other than the traced one
    with torch.no_grad():
        ref_boxes, ref_scores, ref_labels = wrapper(images)
    boxes, scores, labels = session.run(None, {"images": images.numpy()})
    assert boxes.shape == (2, 100, 4) and (ref_scores > 0.05).sum() > 10, source
    assert np.abs(scores - ref_scores.numpy()).max() < 1e-3
    # random weights tie scores to 1e-7, and tied rows may come out in either order: each
    # detection of one side must have a twin (same label, box within 1 px, score within 1e-3)
    for ours, theirs in (((boxes, scores, labels), (ref_boxes.numpy(), ref_scores.numpy(), ref_labels.numpy())),
                         ((ref_boxes.numpy(), ref_scores.numpy(), ref_labels.numpy()), (boxes, scores, labels))):
        for i in range(len(images)):
            twin = ((np.abs(ours[0][i][:, None] - theirs[0][i][None]).max(-1) < 1.0)
                    & (np.abs(ours[1][i][:, None] - theirs[1][i][None]) < 1e-3)
                    & (ours[2][i][:, None] == theirs[2][i][None]))
            assert twin.any(1).all(), f"{source}: image {i} rows {np.flatnonzero(~twin.any(1))} have no twin"


def test_recipe_is_a_valid_train_config():
    recipe = yolov3_recipe(25)
    cfg = build_config(preset=recipe)
    assert cfg.mixup_mode == "geometry" and cfg.mixup > 0 and cfg.scheduler == "cosine"
    assert 0 < cfg.label_smoothing <= 0.1 and cfg.multi_scale > 0 and cfg.sync_bn
    assert get_spec("yolov3").defaults(25, False) == recipe
    assert cfg.optimizer == "adamw" and cfg.close_mosaic == 4 and yolov3_recipe(100)["close_mosaic"] == 15
    assert "backbone_lr_mult" not in recipe and yolov3_recipe(25, pretrained=True)["backbone_lr_mult"] == 0.1


@pytest.mark.slow  # 30 training steps: ~10 s on 2 quiet cores, ~50 s on shared ones
def test_yolov3_tiny_overfits_four_synthetic_images():
    torch.manual_seed(0)
    images, targets = _synthetic_rectangles(4, 128)
    model = build_model("yolov3-tiny", num_classes=2, imgsz=128).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    history = []
    for _ in range(30):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < 0.15 * np.mean(history[:3])
    # BatchNorm running statistics lag a network this young: recompute them on the images
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.raw_outputs(images)
    model.eval()
    with torch.no_grad():
        dets = model.postprocess(model(images), (128, 128), max_det=100)
    found = 0
    for d, t in zip(dets, targets):
        confident = d["scores"] > 0.3
        for box, label in zip(t["boxes"], t["labels"]):
            same = confident & (d["labels"] == label)
            if same.any() and box_iou(box[None], d["boxes"][same]).max().item() > 0.5:
                found += 1
    assert found >= 10, f"only {found} of 12 objects detected with IoU > 0.5 and the right class"
