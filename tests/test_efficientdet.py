"""EfficientDet family: sizes and parameter counts, the effdet name map and weight loading,
anchors and box coding, matching and losses, post-processing, fusion, ONNX export, overfit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from detforge.config import build_config
from detforge.errors import CheckpointError
from detforge.models.efficientdet import EfficientDet
from detforge.models.efficientdet.anchors import decode, encode, level_anchors
from detforge.models.efficientdet.loss import focal_loss, huber, match_anchors
from detforge.models.efficientdet.weights import NAME_MAP, to_detforge, to_effdet
from detforge.models.zoo import available, build_model, get_spec

from dense_helpers import check_postprocess_matches_export, synthetic_rectangles as _synthetic_rectangles, targets as _targets

# effdet.create_model('tf_efficientdet_dX', num_classes=90): 3,880,067 / 6,625,898 / 8,097,039 /
# 12,032,296 parameters (effdet 0.4.1, timm 1.0.31), i.e. the paper's 3.9M / 6.6M / 8.1M / 12.0M
EFFDET_PARAMS_90 = {"d0": 3_880_067, "d1": 6_625_898, "d2": 8_097_039, "d3": 12_032_296}
PAPER_PARAMS_M = {"d0": 3.9, "d1": 6.6, "d2": 8.1, "d3": 12.0}
BCCD = Path("/work/shared/datasets/bccd")


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_sizes_and_param_counts_equal_effdet_and_paper():
    assert {f"efficientdet-d{i}" for i in range(4)} <= set(available())
    for size, expected in EFFDET_PARAMS_90.items():
        count = _n_params(build_model(f"efficientdet-{size}", num_classes=90))  # no input size involved
        assert count == expected
        assert round(count / 1e6, 1) == PAPER_PARAMS_M[size]
    # only the class net's pointwise output conv follows the class count: 9 anchors x (64 in + 1 bias)
    assert _n_params(build_model("efficientdet-d0", num_classes=3)) == 3_880_067 - 87 * 9 * 65


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown EfficientDet size 'd9'"):
        EfficientDet(3, size="d9")
    model = EfficientDet(2)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 64, 64))
    model.train()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        model(torch.rand(2, 3, 64, 64), [_targets([[0, 0, 20, 20]], [5]), _targets([], [])])


def test_recipe_is_seed_002_and_a_valid_train_config():
    rec = get_spec("efficientdet-d0").defaults(25, False)
    cfg = build_config(preset=rec)
    assert cfg.optimizer == "sgd" and cfg.momentum == 0.9 and cfg.weight_decay == 4e-5
    assert cfg.scheduler == "cosine" and cfg.warmup_epochs == 1.0 and cfg.ema and cfg.ema_decay == 0.9998 and cfg.amp
    # lr 0.08 at batch 64, linear in the batch
    assert cfg.lr0 == 0.08 and cfg.lr_scale == "linear" and cfg.nominal_batch == 64


# ---- the effdet name map ---------------------------------------------------------------------

def test_name_map_hand_checked_pairs():
    pairs = {
        "backbone.blocks.1.0.conv_dw.weight": "backbone.blocks.1.0.conv_dw.weight",
        "fpn.resample.3.conv.conv.weight": "neck.p6_proj.conv.weight",
        "fpn.resample.3.conv.bn.running_var": "neck.p6_proj.bn.running_var",
        "fpn.cell.0.fnode.0.combine.edge_weights": "neck.layers.0.nodes.td6.weights",
        # node 4 of a layer is out4; its input 1 is P4 (inputs 0..4 are P3..P7)
        "fpn.cell.0.fnode.4.combine.resample.1.conv.conv.bias": "neck.layers.0.nodes.out4.proj.p4.conv.bias",
        "fpn.cell.2.fnode.7.after_combine.conv.conv_pw.weight": "neck.layers.2.nodes.out7.conv.pw.weight",
        # effdet's head BatchNorms are [repeat][level], detforge's [level][repeat]
        "class_net.bn_rep.2.4.bn.running_mean": "class_head.norms.4.2.running_mean",
        "box_net.conv_rep.0.conv_dw.weight": "box_head.convs.0.dw.weight",
        "class_net.predict.conv_pw.bias": "class_head.pred.pw.bias",
    }
    for effdet_name, detforge_name in pairs.items():
        assert to_detforge(effdet_name) == detforge_name
        assert to_effdet(detforge_name) == effdet_name
    assert to_detforge("fpn.cell.0.fnode.9.combine.edge_weights") is None  # there are 8 nodes
    assert to_detforge("anchors.boxes") is None and len(NAME_MAP) == 14


@pytest.mark.parametrize("size", ["d0", "d1", "d2", "d3"])
def test_name_map_is_a_bijection_on_every_tensor(size):
    names = list(EfficientDet(90, size).state_dict())
    mapped = [to_effdet(n) for n in names]
    assert None not in mapped and len(set(mapped)) == len(names)
    assert [to_detforge(m) for m in mapped] == names


def _fake_effdet_file(tmp_path, model, name="effdet.pth", wrap=None):
    """A state dict under effdet's names, every tensor distinct from ``model``'s."""
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = v + torch.rand(v.shape, generator=g) + 0.1
        else:
            v = v + 7
        sd[to_effdet(k)] = v
    obj = sd if wrap is None else wrap(sd)
    path = tmp_path / name
    torch.save(obj, path)
    return path, sd


def test_load_weights_reads_every_tensor_under_effdet_names(tmp_path):
    torch.manual_seed(0)
    source = EfficientDet(3, "d0")
    path, sd = _fake_effdet_file(tmp_path, source)
    model = build_model("efficientdet-d0", num_classes=3)
    report = get_spec("efficientdet-d0").load_weights(model, path)
    assert len(report["loaded"]) == len(sd) and not report["missing"] and not report["unexpected"] and not report["skipped"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[to_effdet(k)]), k
    # effdet's train script saves {'state_dict_ema': ..., 'state_dict': ...} under a 'model.' prefix
    path2, _ = _fake_effdet_file(tmp_path, source, "ckpt.pth",
                                 wrap=lambda s: {"epoch": 3, "state_dict_ema": {f"model.{k}": v for k, v in s.items()}})
    again = build_model("efficientdet-d0", num_classes=3)
    get_spec("efficientdet-d0").load_weights(again, path2)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_class_count_change_keeps_all_but_the_class_output_conv(tmp_path, caplog):
    path, sd = _fake_effdet_file(tmp_path, EfficientDet(90, "d0"))
    model = build_model("efficientdet-d0", num_classes=3)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO", logger="detforge"):
        report = get_spec("efficientdet-d0").load_weights(model, path)
    assert set(report["skipped"]) == {"class_head.pred.pw.weight", "class_head.pred.pw.bias"}
    assert len(report["loaded"]) == len(sd) - 2 and not report["missing"]
    for k, v in model.state_dict().items():
        expected = fresh[k] if k in report["skipped"] else sd[to_effdet(k)]
        assert torch.equal(v, expected), k
    assert "class count differs" in caplog.text and "class_head.pred.pw.weight" in caplog.text


def test_imagenet_backbone_file_fills_the_backbone_only(tmp_path):
    import timm

    classifier = timm.create_model("tf_efficientnet_b0", pretrained=False)  # the layout of timm's ImageNet files
    torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in classifier.state_dict().items()},
               tmp_path / "b0.pth")
    model = build_model("efficientdet-d0", num_classes=3)
    neck = {k: v.clone() for k, v in model.neck.state_dict().items()}
    report = get_spec("efficientdet-d0").load_weights(model, tmp_path / "b0.pth")
    assert report["part"] == "backbone" and not report["missing"] and not report["unexpected"]
    assert len(report["loaded"]) == len(model.backbone.state_dict())
    source = classifier.state_dict()
    assert all(torch.equal(v, source[k] + 0.5) for k, v in model.backbone.state_dict().items() if v.is_floating_point())
    assert all(torch.equal(v, neck[k]) for k, v in model.neck.state_dict().items())


def test_file_of_another_size_or_format_is_refused(tmp_path):
    path, _ = _fake_effdet_file(tmp_path, EfficientDet(90, "d1"))
    with pytest.raises(ValueError, match="another EfficientDet size"):
        get_spec("efficientdet-d0").load_weights(build_model("efficientdet-d0", num_classes=90), path)
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="none of its 1 tensors"):
        get_spec("efficientdet-d0").load_weights(build_model("efficientdet-d0", num_classes=90), other)


# ---- anchors, box codes, matching, losses ----------------------------------------------------

def test_anchor_hand_values_at_512():
    anchors = [level_anchors((512 // 2**l, 512 // 2**l), (512, 512)) for l in range(3, 8)]
    assert sum(len(a) for a in anchors) == 9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2)
    p3 = anchors[0]
    # first cell, centre (4, 4), stride 8, base size 4 x 8 = 32
    assert torch.allclose(p3[0], torch.tensor([-12.0, -12, 20, 20]))
    assert torch.allclose(p3[1], torch.tensor([4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2]))  # aspect (1.4, 0.7)
    half = 16 * 2 ** (1 / 3)
    assert torch.allclose(p3[3], torch.tensor([4 - half, 4 - half, 4 + half, 4 + half]))  # next octave
    assert torch.allclose(p3[9, :2] + p3[9, 2:], torch.tensor([24.0, 8.0]))  # second cell: x moves first
    assert torch.allclose(anchors[4][0], torch.tensor([64 - 256.0, 64 - 256, 64 + 256, 64 + 256]))  # P7


def test_box_codes_hand_values_and_round_trip():
    anchor = torch.tensor([[0.0, 0, 10, 20]])  # centre (5, 10), w 10, h 20
    box = torch.tensor([[5.0, 0, 15, 40]])  # centre (10, 20), w 10, h 40
    code = encode(box, anchor)
    assert torch.allclose(code, torch.tensor([[0.5, 0.5, math.log(2), 0.0]]), atol=1e-6)  # (dy, dx, dh, dw)
    assert torch.allclose(decode(code, anchor), box, atol=1e-4)


def test_matching_threshold_forced_best_and_first_object_wins():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60], [100, 100, 200, 200]])
    gt = torch.tensor([
        [0.0, 0, 10, 12],  # IoU 0.833 with anchor 0, 0.6 with anchor 1
        [52.0, 52, 58, 58],  # IoU 0.36 with anchor 2: below 0.5, still forced onto it
    ])
    assert match_anchors(anchors, gt).tolist() == [0, 0, 1, -1]
    # two objects whose best anchor is the same: the first one takes it
    twins = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 11]])
    assert match_anchors(anchors, twins).tolist()[0] == 0
    assert match_anchors(anchors, torch.zeros(0, 4)).tolist() == [-1] * 4


def test_focal_and_huber_hand_values():
    logits = torch.tensor([0.0, 2.0])
    targets = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(torch.tensor(2.0)).item()
    expected = [0.25 * 0.5**1.5 * math.log(2), 0.75 * p**1.5 * -math.log(1 - p)]
    assert torch.allclose(focal_loss(logits, targets, 0.25, 1.5), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(huber(torch.tensor([0.05, -0.3]), 0.1), torch.tensor([0.5 * 0.05**2, 0.5 * 0.01 + 0.1 * 0.2]))


def test_background_batch_gives_the_prior_focal_loss():
    torch.manual_seed(0)
    model = build_model("efficientdet-d0", num_classes=3).train()
    with torch.no_grad():  # every class logit becomes the prior bias, so the loss is hand-computable
        model.class_head.pred.pw.weight.zero_()
    losses = model(torch.rand(2, 3, 128, 128), [_targets([], []), _targets([], [])])
    assert losses["loss_box"].item() == 0
    anchors = 9 * (16**2 + 8**2 + 4**2 + 2**2 + 1)
    p = 0.01  # normaliser: 0 positives + 1
    expected = 2 * anchors * 3 * 0.75 * p**1.5 * -math.log(1 - p)
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-4)


def test_forward_backward_shapes_and_gradients():
    torch.manual_seed(0)
    model = build_model("efficientdet-d0", num_classes=2)
    images = torch.rand(3, 3, 96, 160)  # not multiples of 128: P6/P7 come from 'SAME'-padded pools
    model.eval()
    with torch.no_grad():
        out = model(images)
    maps = [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]
    assert [tuple(c.shape) for c in out["cls"]] == [(3, h * w * 9, 2) for h, w in maps]
    assert [tuple(b.shape) for b in out["box"]] == [(3, h * w * 9, 4) for h, w in maps]
    model.train()
    targets = [_targets([[10, 10, 60, 50], [70, 20, 150, 90]], [0, 1]), _targets([], []), _targets([[30, 30, 50, 60]], [1])]
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_box"}
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mixup_weights_and_label_smoothing_enter_the_loss():
    torch.manual_seed(0)
    model = build_model("efficientdet-d0", num_classes=2).eval()  # eval: BatchNorm statistics fixed
    images = torch.rand(1, 3, 128, 128)
    boxes, labels = [[8, 8, 40, 40], [50, 30, 110, 100]], [0, 1]
    with torch.no_grad():
        outputs = model(images)
        full = model.compute_loss(outputs, [_targets(boxes, labels, [1.0, 1.0])])
        half = model.compute_loss(outputs, [_targets(boxes, labels, [0.5, 0.5])])
        smooth = EfficientDet(2, label_smoothing=0.1).criterion(outputs, [_targets(boxes, labels)])
    assert half["loss_box"].item() == pytest.approx(full["loss_box"].item() / 2, rel=1e-5)
    assert half["loss_cls"].item() < full["loss_cls"].item()
    assert smooth["loss_box"].item() == pytest.approx(full["loss_box"].item(), rel=1e-6)
    assert smooth["loss_cls"].item() != pytest.approx(full["loss_cls"].item(), rel=1e-3)


# ---- post-processing, deploy, export ---------------------------------------------------------

def _peaked_model(num_classes: int = 3) -> EfficientDet:
    """Random weights with larger class/box outputs, so scores spread and NMS has work to do."""
    torch.manual_seed(0)
    model = build_model("efficientdet-d0", num_classes=num_classes).eval()
    with torch.no_grad():
        model.class_head.pred.pw.weight.mul_(8)
        model.class_head.pred.pw.bias.fill_(-2.0)
        model.box_head.pred.pw.weight.mul_(2)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    return model


def test_postprocess_sorted_in_image_and_same_as_export_forward():
    check_postprocess_matches_export(_peaked_model(), 128, 160, nms_iou=0.5)


def test_deploy_folds_batchnorm_and_keeps_outputs():
    model = _peaked_model()
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model(images)
        model.deploy()
        after = model(images)
    neck_norms = [m for m in model.neck.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not neck_norms and model.class_head.fused_pw is not None
    for key in ("cls", "box"):
        for a, b in zip(before[key], after[key]):
            assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


def _bccd_images(size: int, count: int) -> torch.Tensor:
    from detforge.data.image_io import read_image
    from detforge.infer.preprocess import fit_image

    paths = sorted((BCCD / "JPEGImages").glob("*.jpg"))[:count]
    arrays = [fit_image(read_image(p), size, "letterbox")[0] for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.skipif(not (BCCD / "JPEGImages").is_dir(), reason=f"BCCD images not found at {BCCD}")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_onnx_export_equals_torch_on_bccd_images(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from detforge.export import export_model

    model = _peaked_model()
    path = export_model(model, ["a", "b", "c"], "onnx", tmp_path / "effdet", imgsz=256, dynamic=True, max_det=50)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    deployed = _peaked_model().deploy()
    # 256: the traced size; 224 (P6 4x4, P7 2x2 through 'SAME' padding of odd maps) tests the dynamic graph
    for size, count in [(256, 2), (224, 1)]:
        x = _bccd_images(size, count)
        with torch.no_grad():
            ref_boxes, ref_scores, ref_labels = deployed.export_forward(x, max_det=50)
        boxes, scores, labels = session.run(None, {"images": x.numpy()})
        assert boxes.shape == (count, 50, 4) and (scores > 0.05).sum() > 10
        assert np.abs(scores - ref_scores.numpy()).max() < 1e-3
        assert np.abs(boxes - ref_boxes.numpy()).max() < 1.0
        assert np.array_equal(labels, ref_labels.numpy())


# ---- training ----------------------------------------------------------------------------

def _overfit(images, targets, steps: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    model = build_model("efficientdet-d0", num_classes=3, drop_path_rate=0.0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        history.append(loss.item())
    return history


def test_loss_falls_overfitting_two_synthetic_images():
    images, targets = _synthetic_rectangles(n_images=2)
    history = _overfit(images, targets, steps=12, lr=1e-2)
    assert np.mean(history[-3:]) < 0.25 * np.mean(history[:2]), history


def test_loss_falls_overfitting_two_bccd_images(bccd_root):
    from detforge.data.formats.voc import read_voc
    from detforge.data.image_io import read_image
    from detforge.infer.preprocess import fit_image

    samples = read_voc(bccd_root).splits["train"][:2]
    images, targets = [], []
    for s in samples:
        img, place = fit_image(read_image(s.image_path), 256, "letterbox")
        scale = torch.tensor(place.scale * 2, dtype=torch.float32)
        pad = torch.tensor(place.pad * 2, dtype=torch.float32)
        boxes = torch.as_tensor(np.asarray(s.boxes), dtype=torch.float32).reshape(-1, 4) * scale + pad
        images.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
        targets.append({"boxes": boxes, "labels": torch.as_tensor(np.asarray(s.labels), dtype=torch.long)})
    assert sum(len(t["labels"]) for t in targets) >= 20  # cells to find
    history = _overfit(torch.stack(images), targets, steps=12, lr=1e-2)
    assert np.mean(history[-3:]) < 0.5 * np.mean(history[:2]), history
