"""FCOS family: sizes, losses, ATSS assignment, post-processing, fusion, ONNX export, overfit."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detforge.config import build_config
from detforge.models.fcos import FCOS
from detforge.models.fcos.assigner import atss_assign
from detforge.models.fcos.head import grid_points
from detforge.models.fcos.loss import centerness_target
from detforge.models.zoo import available, build_model

from dense_helpers import check_postprocess_matches_export, synthetic_rectangles as _synthetic_rectangles, targets as _targets

PARAMS_3_CLASSES = {"fcos-n": 1_692_187, "fcos-s": 6_741_547, "fcos-m": 17_589_915}


def _background():
    return _targets([], [])


def _level_points(size: int, strides=(8, 16, 32)):
    pts = [grid_points(torch.zeros(1, 1, math.ceil(size / s), math.ceil(size / s)), s) for s in strides]
    sizes = [len(p) for p in pts]
    stride_of = torch.cat([torch.full((n,), float(s)) for n, s in zip(sizes, strides)])
    return torch.cat(pts), sizes, stride_of


def test_registered_sizes_and_exact_param_counts():
    assert {"fcos-n", "fcos-s", "fcos-m"} <= set(available())
    counts = {name: sum(p.numel() for p in build_model(name, num_classes=3).parameters()) for name in PARAMS_3_CLASSES}
    assert counts == PARAMS_3_CLASSES
    assert counts["fcos-n"] < counts["fcos-s"] < counts["fcos-m"]
    assert 1e6 <= counts["fcos-n"] <= 2e6 and 5e6 <= counts["fcos-s"] <= 8e6 and 15e6 <= counts["fcos-m"] <= 20e6
    # only the class conv depends on the class count: 3x3 conv from 64 channels, +1 bias, per class
    assert sum(p.numel() for p in build_model("fcos-n", num_classes=4).parameters()) == 1_692_187 + 64 * 9 + 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown FCOS size 'x'"):
        FCOS(3, size="x")
    model = FCOS(2)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 64, 64))
    model.train()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        model(torch.rand(1, 3, 64, 64), [_targets([[0, 0, 20, 20]], [5])])


def test_recipe_is_a_valid_train_config():
    cfg = build_config(preset=FCOS.recipe())
    assert cfg.optimizer == "adamw" and cfg.lr0 == 1e-3 and cfg.weight_decay == 5e-4 and cfg.clip_grad == 10.0


def test_centerness_target_hand_values():
    boxes = torch.tensor([[10.0, 10, 50, 40], [10.0, 10, 50, 40]])
    points = torch.tensor([[30.0, 25], [30.0, 20]])
    # centre -> 1; (30, 20): l=r=20, t=10, b=20 -> sqrt(1 * 0.5)
    assert torch.allclose(centerness_target(points, boxes), torch.tensor([1.0, math.sqrt(0.5)]))


def test_atss_small_object_goes_to_stride_8_cells_inside_it():
    points, sizes, strides = _level_points(64)
    # 32x32 object centred at (32, 32): stride-8 anchors (64 px) all hold it (IoU 0.25), stride-16
    # (128 px) give 0.0625 and stride-32 (256 px) 0.0156, so mean+std keeps the 9 stride-8 candidates
    gt = torch.tensor([[16.0, 16, 48, 48]])
    a = atss_assign(points, sizes, strides, gt)
    pos = a.positive.nonzero().flatten()
    assert len(pos) == 9 and bool((pos < sizes[0]).all())
    for x, y in [(28, 28), (36, 28), (28, 36), (36, 36)]:  # the 4 cells nearest the centre
        idx = int(((points - torch.tensor([x, y])).abs().sum(1) == 0).nonzero())
        assert a.positive[idx]
    inside = (points[pos] > gt[0, :2]).all(1) & (points[pos] < gt[0, 2:]).all(1)
    assert bool(inside.all()) and bool((a.gt_index[pos] == 0).all())


def test_atss_large_object_goes_to_stride_32_and_background_has_none():
    points, sizes, strides = _level_points(256)
    # 240 px object centred at (128, 128). Candidate IoUs: 9 stride-8 anchors 0.0711, 9 stride-16
    # 0.2844, the 4 stride-32 cells around the centre 0.7765 and the next 5 stride-32 cells 0.6047;
    # mean + std (unbiased) = 0.3455 + 0.2624 = 0.6079, so exactly the 4 central stride-32 cells
    gt = torch.tensor([[8.0, 8, 248, 248]])
    a = atss_assign(points, sizes, strides, gt)
    pos = a.positive.nonzero().flatten()
    assert sorted(points[pos].tolist()) == [[112, 112], [112, 144], [144, 112], [144, 144]]
    assert bool((pos >= sizes[0] + sizes[1]).all())
    assert not atss_assign(points, sizes, strides, torch.zeros(0, 4)).positive.any()


def test_forward_backward_shapes_and_gradients():
    torch.manual_seed(0)
    model = build_model("fcos-n", num_classes=2)
    images = torch.rand(3, 3, 96, 128)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert [tuple(c.shape) for c in out["cls"]] == [(3, 12 * 16, 2), (3, 6 * 8, 2), (3, 3 * 4, 2)]
    assert [tuple(r.shape) for r in out["ltrb"]] == [(3, 192, 4), (3, 48, 4), (3, 12, 4)]
    assert bool(torch.cat(out["ltrb"], 1).gt(0).all())
    model.train()
    targets = [_targets([[10, 10, 60, 50], [70, 20, 120, 90]], [0, 1]), _background(), _targets([[30, 30, 50, 60]], [1])]
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_background_only_batch_gives_finite_losses():
    torch.manual_seed(0)
    model = build_model("fcos-n", num_classes=3).train()
    with torch.no_grad():  # every class logit becomes the prior bias, so the loss is hand-computable
        model.head.cls_pred.weight.zero_()
    losses = model(torch.rand(2, 3, 64, 64), [_background(), _background()])
    assert losses["loss_box"].item() == 0 and losses["loss_ctr"].item() == 0
    # focal loss of the prior p=0.01 over every cell and class: alpha' * p^2 * -log(1-p) each
    cells, p = 64 + 16 + 4, 0.01
    expected = 2 * cells * 3 * 0.75 * p**2 * -math.log(1 - p)
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-4)
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mixup_weights_and_label_smoothing_enter_the_loss():
    torch.manual_seed(0)
    model = build_model("fcos-n", num_classes=2).train()
    images = torch.rand(1, 3, 64, 64)
    boxes, labels = [[8, 8, 40, 40], [30, 20, 60, 56]], [0, 1]
    full = model(images, [_targets(boxes, labels, [1.0, 1.0])])
    half = model(images, [_targets(boxes, labels, [0.5, 0.5])])
    # centerness BCE is weighted by the object weight; GIoU is normalised by the weights too
    assert half["loss_ctr"].item() == pytest.approx(full["loss_ctr"].item() / 2, rel=1e-5)
    assert half["loss_box"].item() == pytest.approx(full["loss_box"].item(), rel=1e-5)
    assert half["loss_cls"].item() < full["loss_cls"].item()
    smooth = FCOS(2, label_smoothing=0.1)
    smooth.load_state_dict(model.state_dict())
    smoothed = smooth.train()(images, [_targets(boxes, labels)])
    assert smoothed["loss_box"].item() == pytest.approx(full["loss_box"].item(), rel=1e-6)
    assert smoothed["loss_cls"].item() != pytest.approx(full["loss_cls"].item(), rel=1e-3)


def _peaked_model(num_classes: int = 3) -> FCOS:
    """Random weights with larger head outputs, so scores spread and NMS has work to do."""
    torch.manual_seed(0)
    model = build_model("fcos-n", num_classes=num_classes).eval()
    with torch.no_grad():
        model.head.cls_pred.weight.normal_(0, 0.5)
        model.head.ctr_pred.weight.normal_(0, 0.5)
        model.head.reg_pred.weight.normal_(0, 0.2)
    return model


def test_postprocess_sorted_in_image_and_same_as_export_forward():
    check_postprocess_matches_export(_peaked_model(), 96, 128, nms_iou=0.6)


def test_deploy_fuses_batchnorm_and_keeps_outputs():
    torch.manual_seed(0)
    model = build_model("fcos-n", num_classes=3)
    # non-trivial BN statistics and affine terms
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model.eval()
    images = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        before = model(images)
        model.deploy()
        after = model(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for key in ("cls", "ltrb", "ctr"):
        for a, b in zip(before[key], after[key]):
            assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_export_matches_onnxruntime_at_two_sizes():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _peaked_model().deploy()

    class ExportWrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.export_forward(x, max_det=50)

    wrapper = ExportWrapper(model).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapper, torch.rand(1, 3, 64, 64), buf, dynamo=False, opset_version=17,
            input_names=["images"], output_names=["boxes", "scores", "labels"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 128, 160)]:  # the second differs from the traced size
        x = torch.rand(*shape)
        with torch.no_grad():
            ref_boxes, ref_scores, ref_labels = wrapper(x)
        boxes, scores, labels = session.run(None, {"images": x.numpy()})
        assert boxes.shape == (shape[0], 50, 4)
        assert np.abs(boxes - ref_boxes.numpy()).max() < 1e-3
        assert np.abs(scores - ref_scores.numpy()).max() < 1e-5
        assert np.array_equal(labels, ref_labels.numpy())
        assert (scores > 0).sum() > 0


def test_fcos_n_overfits_four_synthetic_images():
    torch.manual_seed(0)
    images, targets = _synthetic_rectangles()
    model = build_model("fcos-n", num_classes=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    history = []
    for _ in range(100):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < 0.4 * np.mean(history[:3])
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
    assert found >= 11, f"only {found} of 12 objects detected with IoU > 0.5 and the right class"
