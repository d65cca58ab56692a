"""torchvision's Faster / Mask R-CNN behind DetectionModel: parameter counts against
torchvision's builders, training forward/backward, the batched export path against
torchvision's own inference, mask pasting against torchvision's, a loss that falls on a tiny
overfit, pretrained files with a class-count change, trust-ratio module groups, and ONNX
Runtime against torch on BCCD images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from deploy_helpers import NAMES, assert_same_detections

from detforge.models.masks import paste_masks
from detforge.models.zoo import available, build_model

RCNN = ("faster-rcnn-mbv3", "faster-rcnn-r50", "mask-rcnn-r50")
BUILDERS = {
    "faster-rcnn-mbv3": torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn,
    "faster-rcnn-r50": torchvision.models.detection.fasterrcnn_resnet50_fpn_v2,
    "mask-rcnn-r50": torchvision.models.detection.maskrcnn_resnet50_fpn_v2,
}
SIZE = 128


def _fast(model, proposals: int = 200, rois: int = 64):
    """Fewer proposals and sampled RoIs than torchvision's 1000-2000 / 512: same code, less time."""
    for mode in ("training", "testing"):
        model.rpn._pre_nms_top_n[mode] = proposals
        model.rpn._post_nms_top_n[mode] = proposals
    model.roi_heads.fg_bg_sampler.batch_size_per_image = rois
    return model


def _scene(n: int = 4, size: int = SIZE, seed: int = 0):
    """Images with 2 bright rectangles each on dim noise, their boxes, labels and masks."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        img = torch.rand(3, size, size, generator=g) * 0.3
        boxes, labels, masks = [], [], []
        for k in range(2):
            x0, y0 = torch.randint(0, size - 48, (2,), generator=g).tolist()
            w, h = torch.randint(24, 48, (2,), generator=g).tolist()
            cls = (i + k) % 3
            img[cls, y0 : y0 + h, x0 : x0 + w] = 0.9
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(cls)
            mask = torch.zeros(size, size, dtype=torch.uint8)
            mask[y0 : y0 + h, x0 : x0 + w] = 1
            masks.append(mask)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "masks": torch.stack(masks)})
    return torch.stack(images), targets


def _calibrated(name: str, images: torch.Tensor, proposals: int = 200):
    """A seeded model whose BatchNorm statistics come from ``images`` (a fresh model's unit
    statistics squash the features, so every RoI would score alike and rankings would be ties)."""
    torch.manual_seed(0)
    model = _fast(build_model(name, len(NAMES)), proposals)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
        model.train()
        _, targets = _scene(len(images), images.shape[-1])
        model(images, targets)
    return model.eval()


def test_registered_with_torchvision_parameter_counts():
    for name in RCNN:
        assert name in available()
    # detforge's 3 classes are torchvision's 4 (background first): same modules, same counts
    for name, builder in BUILDERS.items():
        ours = build_model(name, 3)
        ref = builder(weights=None, weights_backbone=None, num_classes=4)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
        assert list(ours.state_dict()) == list(ref.state_dict())  # torchvision's own names
        assert ours.supports_masks == (name == "mask-rcnn-r50")


@pytest.mark.parametrize("name", RCNN)
def test_forward_backward(name):
    images, targets = _scene(2)
    model = _fast(build_model(name, 3)).train()
    losses = model(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if model.supports_masks else set())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    # every trainable tensor gets a gradient: DDP needs no find_unused_parameters
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_background_image_and_degenerate_box():
    model = _fast(build_model("faster-rcnn-mbv3", 3)).train()
    images, targets = _scene(2)
    targets[0] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    targets[1]["boxes"][1] = torch.tensor([30.0, 30.0, 30.0, 60.0])  # zero width after augmentation
    losses = model(images, targets)
    assert torch.isfinite(sum(losses.values()))
    assert model._degenerate_dropped == 1


def test_mask_model_needs_masks():
    model = _fast(build_model("mask-rcnn-r50", 3)).train()
    images, targets = _scene(1)
    del targets[0]["masks"]
    with pytest.raises(ValueError, match="instance masks"):
        model(images, targets)


def test_loss_falls_when_overfitting():
    images, targets = _scene(2)
    torch.manual_seed(0)
    model = _fast(build_model("faster-rcnn-mbv3", 3)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    history = []
    for _ in range(12):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    # measured: 2.18 at the first step, 0.39 at the twelfth
    assert history[-1] < 0.4 * history[0], history


def test_paste_masks_equals_torchvision():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(5, 28, 28, generator=g)
    boxes = torch.tensor([[10.0, 12, 60, 40], [0, 0, 127, 95], [-8, 50, 30, 120], [100, 80, 140, 100], [5.5, 5.5, 6.2, 6.1]])
    ours = paste_masks(probs, boxes, (96, 128))
    ref = (paste_masks_in_image(probs[:, None], boxes, (96, 128))[:, 0] > 0.5).to(torch.uint8)
    assert ours.dtype == torch.uint8 and ours.shape == (5, 96, 128)
    assert torch.equal(ours, ref)
    assert int(ours[0].sum()) > 0
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (96, 128)).shape == (0, 96, 128)


@pytest.mark.parametrize("name", ["faster-rcnn-mbv3", "mask-rcnn-r50"])
def test_batched_path_equals_torchvision_inference(name):
    """export_forward (the whole batch as one tensor) gives torchvision's detections: same
    boxes, scores, labels (and pasted masks) as the eager RPN / RoI heads, image by image."""
    images, _ = _scene(2, size=160)
    masks = name.startswith("mask")
    model = _calibrated(name, images, proposals=100 if masks else 300)
    keep = 30 if masks else 100  # the mask head costs ~0.5 GMAC per detection
    model.roi_heads.detections_per_img = keep
    with torch.no_grad():
        eager = model.postprocess(model(images), (160, 160), max_det=keep)
        batched = model.export_forward(images, keep)
    for b, det in enumerate(eager):
        k = len(det["scores"])
        assert k == int((batched[1][b] > 0).sum()) and k >= keep // 2
        ref = (det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy())
        got = (batched[0][b, :k].numpy(), batched[1][b, :k].numpy(), batched[2][b, :k].numpy())
        assert_same_detections(ref, got, floor=0.0, box_tol=1e-3, score_tol=1e-5)
        if model.supports_masks:
            # rows in the same order (ties aside): pasting the RoI maps gives the same pixels
            same = np.abs(ref[0] - got[0]).max(1) < 1e-3
            pasted = paste_masks(batched[3][b, :k], batched[0][b, :k], (160, 160))
            assert pasted.shape == det["masks"].shape and same.sum() >= k // 2
            assert torch.equal(pasted[torch.from_numpy(same)], det["masks"][torch.from_numpy(same)])


def test_large_eval_batch_runs_in_chunks():
    """A validation batch larger than EVAL_CHUNK goes through in chunks with the same results
    as image by image (up to float noise of batch-size dependent kernels)."""
    from detforge.models.rcnn.model import EVAL_CHUNK

    images, _ = _scene(EVAL_CHUNK + 2, size=128)
    model = _calibrated("faster-rcnn-mbv3", images, proposals=300)
    with torch.no_grad():
        whole = model(images)
        alone = [model(images[i : i + 1])[0] for i in range(len(images))]
    assert len(whole) == len(images)
    for a, b in zip(whole, alone):
        assert len(a["scores"]) == len(b["scores"])
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5) and torch.allclose(a["boxes"], b["boxes"], atol=1e-3)


def _save_state(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_pretrained_torchvision_coco_file_with_other_class_count(tmp_path, caplog):
    """A torchvision COCO checkpoint (91 classes) into a 3-class model: everything but the
    predictor heads is copied; a file of another architecture is refused."""
    torch.manual_seed(1)
    coco = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91)
    path = _save_state(tmp_path, "fasterrcnn_mobilenet_v3_large_fpn_coco.pth", coco.state_dict())
    with caplog.at_level("INFO", logger="detforge"):
        model = build_model("faster-rcnn-mbv3", 3, pretrained=str(path))
    report = model.load_report
    heads = {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
             "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"}
    assert set(report["skipped"]) == heads
    assert "class count differs" in caplog.text
    ours, ref = model.state_dict(), coco.state_dict()
    for k in ours:
        if k in heads:
            assert ours[k].shape[0] != ref[k].shape[0]
        elif k in ref:
            assert torch.equal(ours[k], ref[k]), k
    # torchvision's fine-tuning setup: 3 trainable backbone stages, frozen BatchNorm in the body
    assert isinstance(model.backbone.body["1"].block[0][1], torchvision.ops.misc.FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in model.backbone.body["0"].parameters())
    assert all(p.requires_grad for p in model.backbone.body["16"].parameters())

    # the spec's loader (pretrained=PATH on an already built model) reads the same file
    from detforge.models.zoo import get_spec

    fresh = build_model("faster-rcnn-mbv3", 3)
    again = get_spec("faster-rcnn-mbv3").load_weights(fresh, str(path))
    assert set(again["skipped"]) == heads and set(report["loaded"]) <= set(again["loaded"])

    # a checkpoint of that model, loaded into one rebuilt from its name, computes the same
    rebuilt = build_model("faster-rcnn-mbv3", 3)
    rebuilt.load_state_dict(model.state_dict())
    assert isinstance(rebuilt.backbone.body["1"].block[0][1], torchvision.ops.misc.FrozenBatchNorm2d)
    images, _ = _scene(1)
    with torch.no_grad():
        assert torch.equal(_fast(model).eval().export_forward(images, 20)[1], _fast(rebuilt).eval().export_forward(images, 20)[1])

    from detforge.errors import CheckpointError

    r50 = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    wrong = _save_state(tmp_path, "r50.pth", r50.state_dict())
    with pytest.raises(CheckpointError, match="another architecture"):
        build_model("faster-rcnn-mbv3", 3, pretrained=str(wrong))


def test_pretrained_imagenet_backbone_files(tmp_path):
    """ImageNet classification checkpoints map into backbone.body (the classifier is left out)."""
    torch.manual_seed(2)
    mbv3 = torchvision.models.mobilenet_v3_large(weights=None)
    path = _save_state(tmp_path, "mobilenet_v3_large.pth", {"model": mbv3.state_dict()})  # reference-script layout
    model = build_model("faster-rcnn-mbv3", 3, pretrained=str(path))
    assert model.load_report["kind"] == "ImageNet mobilenet_v3_large backbone checkpoint"
    assert torch.equal(model.state_dict()["backbone.body.4.block.1.0.weight"], mbv3.state_dict()["features.4.block.1.0.weight"])
    assert not any(k.startswith("classifier") for k in model.load_report["unexpected"])

    resnet = torchvision.models.resnet50(weights=None)
    path = _save_state(tmp_path, "resnet50.pth", resnet.state_dict())
    model = build_model("mask-rcnn-r50", 3, pretrained=str(path))
    body = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.body.")}
    assert len(model.load_report["loaded"]) == len(body)  # every ResNet tensor but fc
    assert torch.equal(body["backbone.body.layer3.2.conv2.weight"], resnet.state_dict()["layer3.2.conv2.weight"])
    # ResNet v2 detectors keep trainable BatchNorm; conv1 and layer1 freeze over pretrained weights
    assert not model.backbone.body.conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


def test_trust_ratio_groups_follow_the_model(tmp_path):
    from timm.optim import Lars

    from detforge.engine.trust_ratio import TrustRatioLogger, module_group

    model = _fast(build_model("mask-rcnn-r50", 3)).train()
    declared = model.module_groups
    assert module_group("backbone.fpn.inner_blocks.0.0.weight", declared=declared) == "fpn"
    assert module_group("roi_heads.mask_predictor.mask_fcn_logits.weight", declared=declared) == "roi_mask_head"
    assert module_group("rpn.head.conv.0.0.weight", declared=declared) == "rpn"
    images, targets = _scene(1)
    opt = Lars([p for p in model.parameters() if p.requires_grad], lr=0.01, trust_coeff=1.0, always_adapt=True)
    sum(model(images, targets).values()).backward()
    logger = TrustRatioLogger(model, opt, every=1, out_csv=tmp_path / "trust_ratio.csv")
    means = logger.maybe_log(0)
    assert set(means) == {"backbone", "fpn", "rpn", "roi_box_head", "roi_mask_head"}
    # a group mean is the mean of its tensors' ratios ||w|| / (||g|| + wd ||w||), wd = 0 here
    ratios = logger.compute()
    rpn = [v for n, (v, _) in ratios.items() if n.startswith("rpn.")]
    assert means["rpn"] == pytest.approx(sum(rpn) / len(rpn))
    w = model.rpn.head.cls_logits.weight
    assert ratios["rpn.head.cls_logits.weight"][0] == pytest.approx(float(w.detach().norm() / w.grad.norm()), rel=1e-5)


def _bccd_batch(bccd_root, n, size):
    from detforge.data.image_io import read_image
    from detforge.infer.preprocess import fit_image, to_input

    files = sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:n]
    return to_input([fit_image(read_image(f), size, "letterbox")[0] for f in files])


def _onnx_check(name, bccd_root, tmp_path, proposals):
    import onnxruntime as ort

    from detforge.export import export_model

    batch = _bccd_batch(bccd_root, 3, 160)
    model = _calibrated(name, torch.from_numpy(batch), proposals=proposals)
    path = export_model(model, NAMES, "onnx", tmp_path / name, imgsz=160, dynamic=True, batch=2, max_det=100)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(model.export_output_names)
    compared = 0
    for n in (1, 3):  # a graph traced at batch 2 serves other batch sizes
        with torch.no_grad():
            ref = [t.numpy() for t in model.export_forward(torch.from_numpy(batch[:n]), 100)]
        got = session.run(None, {"images": batch[:n]})
        for b in range(n):
            compared += assert_same_detections((ref[0][b], ref[1][b], ref[2][b]), (got[0][b], got[1][b], got[2][b]),
                                               floor=0.05, box_tol=1.0, score_tol=1e-3)
        if model.supports_masks:
            assert got[3].shape == (n, 100, 28, 28)
            for b in range(n):  # masks of rows that came out in the same order
                same = np.abs(ref[0][b] - got[0][b]).max(1) < 1e-2
                # float noise through R50 + the 4-conv mask head: measured 1.1e-3 at most
                assert same.sum() > 20 and np.abs(ref[3][b][same] - got[3][b][same]).max() < 5e-3
    return compared


def test_onnx_equals_torch_faster_rcnn_mbv3(bccd_root, tmp_path):
    assert _onnx_check("faster-rcnn-mbv3", bccd_root, tmp_path, proposals=300) >= 100


@pytest.mark.slow  # R50 v2: a 4-conv box head on every proposal, ~2 min on 2 cores
def test_onnx_equals_torch_mask_rcnn_r50(bccd_root, tmp_path):
    assert _onnx_check("mask-rcnn-r50", bccd_root, tmp_path, proposals=100) >= 100
