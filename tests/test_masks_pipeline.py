"""Masks from the dataset to the metrics: validation scores a mask model's masks (mapped back
from the letterboxed input) against the samples' outlines, and a box-only model trains on a
dataset with outlines as if it had boxes only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detforge.config import TrainConfig
from detforge.data.dataset import DetectionDataset
from detforge.data.formats import load_dataset
from detforge.data.loader import build_dataloader
from detforge.data.polygons import rasterize
from detforge.engine.validator import evaluate
from detforge.records import Detections, Sample

COLOURS = [(230, 20, 20), (20, 230, 20)]


def _painted_samples(tmp_path, n=4):
    """Images (160 x 120, so letterbox pads) with a star-ish and a round object of known colour."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        img = np.full((120, 160, 3), 60, np.uint8)
        outlines = []
        for label in range(2):
            c = rng.uniform([30, 30], [130, 90])
            t = np.linspace(0, 2 * np.pi, 10 if label == 0 else 40, endpoint=False)
            r = np.where(np.arange(len(t)) % 2 == 0, 22, 10) if label == 0 else np.full(len(t), 16.0)
            ring = np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1).clip(0, [160, 120])
            img[rasterize([ring], 120, 160)] = COLOURS[label]
            outlines.append([ring])
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        boxes = [[*o[0].min(0), *o[0].max(0)] for o in outlines]
        samples.append(Sample(path, boxes, [0, 1], 160, 120, polygons=outlines))
    return samples


class ColourMaskModel(nn.Module):
    """A stand-in mask model: each class is its colour; the mask is the pixels of that colour,
    the box their bounds (in input pixels), as a mask model's postprocess returns them."""

    supports_masks = True
    stride = 32

    def forward(self, x):
        return x

    def postprocess(self, x, input_hw, max_det=300):
        out = []
        for img in x:
            boxes, masks = [], []
            for colour in COLOURS:
                ref = torch.tensor(colour, dtype=img.dtype).view(3, 1, 1) / 255
                m = ((img - ref).abs().amax(0) < 0.25)
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                masks.append(m.to(torch.uint8))
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor([0.9, 0.8]),
                        "labels": torch.tensor([0, 1]), "masks": torch.stack(masks)})
        return out


def test_validation_scores_predicted_masks_against_outlines(tmp_path):
    samples = _painted_samples(tmp_path)
    cfg = TrainConfig(imgsz=128, resize_mode="letterbox")
    loader = build_dataloader(DetectionDataset(samples, cfg, train=False), 2, train=False, workers=0, seed=0)
    metrics, evaluator, dets = evaluate(ColourMaskModel(), loader, ["star", "disc"], 0.5, 0.5, torch.device("cpu"),
                                        show=False)
    assert evaluator.has_masks and set(dets) == set(range(len(samples)))
    # the masks come back through a 0.8x letterbox: every IoU is high, so AP50 is perfect and
    # AP50-95 loses only at the strictest thresholds
    assert metrics["segm_map50"] == pytest.approx(1.0)
    assert metrics["segm_map50_95"] > 0.7
    assert metrics["map50"] == pytest.approx(1.0)
    assert {"segm_ap50", "segm_ap50_95"} <= set(metrics["per_class"][0])


def test_box_only_family_trains_one_step_on_a_dataset_with_outlines(synthetic_root):
    from detforge.models.zoo import build_model

    data = load_dataset(synthetic_root)
    train = data.splits["train"][:4]
    assert any(s.polygons for s in train)  # the built-in set carries outlines
    cfg = TrainConfig(imgsz=96, mosaic=0.5, mixup=0.5)
    for masks in (False, True):  # what the trainer makes for a box-only model, and masks anyway
        ds = DetectionDataset(train, cfg, train=True, masks=masks)
        images, targets, _ = next(iter(build_dataloader(ds, 4, train=True, workers=0, seed=0)))
        assert ("masks" in targets[0]) == masks
        torch.manual_seed(0)
        model = build_model("fcos-n", num_classes=len(data.names)).train()
        losses = model(images.float() / 255, targets)
        loss = sum(losses.values())
        loss.backward()
        assert torch.isfinite(loss) and loss.item() > 0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_drawn_masks_tint_their_pixels_only(tmp_path):
    from detforge.data.preview import save_batch_preview
    from detforge.eval.plots import plot_predictions
    from detforge.infer.draw import class_color, draw_detections

    img = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((1, 60, 80), np.uint8)
    masks[0, 20:40, 30:50] = 1
    det = Detections([[25, 15, 55, 45]], [0.9], [2], masks)
    out = draw_detections(img, det, ["a", "b", "c"], line_width=1)
    colour = np.array(class_color(2))
    np.testing.assert_array_equal(out[30, 40], np.round(100 * 0.55 + colour * 0.45).astype(np.uint8))
    assert (out[5:10, 5:10] == 100).all()  # away from the box and mask: untouched
    plot_predictions([img], [(np.array([[30, 20, 50, 40]]), np.array([2]))], [det], ["a", "b", "c"],
                     tmp_path / "pred.png")
    target = {"boxes": torch.tensor([[30.0, 20, 50, 40]]), "labels": torch.tensor([1]),
              "masks": torch.from_numpy(masks)}
    save_batch_preview(torch.from_numpy(img).permute(2, 0, 1)[None], [target], ["a", "b"], tmp_path / "batch.png")
    assert (tmp_path / "pred.png").stat().st_size > 0 and (tmp_path / "batch.png").stat().st_size > 0


class ColourMaskExport(ColourMaskModel):
    """The same stand-in as an exported mask model: fixed K rows and RoI mask probabilities
    [B, K, 28, 28] inside each box (what a two-stage model's export_forward returns)."""

    def export_forward(self, x, max_det=300):
        from torchvision.ops import roi_align

        res = self.postprocess(x, x.shape[-2:])
        boxes = torch.stack([r["boxes"] for r in res])
        roi = torch.stack([torch.cat([roi_align(r["masks"][k][None, None].float(), [r["boxes"][k:k + 1]], (28, 28),
                                                1.0, 2, True)[:, 0] for k in range(len(r["boxes"]))]) for r in res])
        return boxes, torch.stack([r["scores"] for r in res]), torch.stack([r["labels"] for r in res]), roi


def test_predict_pastes_masks_and_writes_yolo_seg_and_rle(tmp_path):
    pytest.importorskip("detforge.models.masks", reason="RoI masks are pasted by the mask family's helper")
    from detforge.infer.commands import coco_results, yolo_lines
    from detforge.infer.predictor import Predictor

    samples = _painted_samples(tmp_path, n=2)
    image = cv2.cvtColor(cv2.imread(str(samples[0].image_path)), cv2.COLOR_BGR2RGB)
    predictor = Predictor.from_model(ColourMaskExport(), ["star", "disc"], imgsz=128, resize_mode="letterbox",
                                     conf=0.5, device="cpu")
    (det,) = predictor.predict(image)
    assert det.masks is not None and det.masks.shape == (2, 120, 160)
    for mask, label, rings in zip(det.masks.astype(bool), det.labels, samples[0].polygons):
        truth = rasterize(rings, 120, 160)
        assert (mask & truth).sum() / (mask | truth).sum() > 0.85, label
    lines = yolo_lines(det, 160, 120)
    values = np.array(lines[0].split()[1:-1], float).reshape(-1, 2) * [160, 120]
    traced = rasterize([values], 120, 160)
    assert (traced == det.masks[0].astype(bool)).mean() > 0.995  # the line holds the mask
    rows = coco_results(det, 1, ["star", "disc"])
    import faster_coco_eval.core.mask as coco_mask

    assert rows[0]["segmentation"]["size"] == [120, 160]
    np.testing.assert_array_equal(coco_mask.decode(rows[0]["segmentation"]), det.masks[0])
