"""D-FINE's training-only dense encoder supervision (``enc_o2m``): the loss on a hand-worked
case, the dense outputs in training only, and an unchanged inference graph for the same weights."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from detforge.config import ConfigError, build_config
from detforge.export import export_model
from detforge.models.dfine import DFine
from detforge.models.dfine.criterion import DFineCriterion
from detforge.models.zoo import get_spec

LN2 = math.log(2.0)
TARGET = [0.5, 0.5, 0.2, 0.4]  # normalised cxcywh: xyxy 0.4, 0.3, 0.6, 0.7


def _target():
    return [{"boxes": torch.tensor([TARGET]), "labels": torch.tensor([0])}]


def _dense_cells():
    """Four encoder cells at logit 0: cell 2 exactly on the target, cell 0 shifted 0.05 right
    (IoU = GIoU = 0.06 / 0.10 = 0.6), cells 1 and 3 far away in opposite corners."""
    boxes = torch.tensor([[[0.55, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], TARGET, [0.9, 0.9, 0.1, 0.1]]])
    return {"pred_logits": torch.zeros(1, 4, 1), "pred_boxes": boxes}


def _main_queries():
    return {"pred_logits": torch.zeros(1, 1, 1), "pred_boxes": torch.tensor([[TARGET]])}


def test_enc_o2m_loss_hand_worked():
    """MAL with k = 2: the target twice, so its two cheapest cells (2, then 0) are positives and
    cells 1 and 3 negatives. At logit 0 every BCE is ln 2; positives weigh 1, negatives
    0.5**1.5: (2 + 2 * 0.5**1.5) ln 2 over k * 1 box. L1: |0.05| over 2 boxes, x5 = 0.125.
    GIoU: (1 - 1) + (1 - 0.6) over 2 boxes, x2 = 0.4."""
    outputs = {**_main_queries(), "enc_dense_outputs": _dense_cells()}
    losses = DFineCriterion(1, use_mal=True, enc_o2m_repeats=2)(outputs, _target())
    assert {"loss_mal_enc_o2m", "loss_bbox_enc_o2m", "loss_giou_enc_o2m"} <= set(losses)
    assert math.isclose(losses["loss_mal_enc_o2m"].item(), (2 + 2 * 0.5**1.5) * LN2 / 2, rel_tol=1e-5)
    assert math.isclose(losses["loss_bbox_enc_o2m"].item(), 0.125, rel_tol=1e-5)
    assert math.isclose(losses["loss_giou_enc_o2m"].item(), 0.4, rel_tol=1e-5)
    # the main query is exact and alone: MAL ln 2 over 1 box, no box loss; untouched by the dense terms
    assert math.isclose(losses["loss_mal"].item(), LN2, rel_tol=1e-5)
    # k = 1 picks the exact cell only: three negatives, no box loss
    one = DFineCriterion(1, use_mal=True, enc_o2m_repeats=1)(outputs, _target())
    assert math.isclose(one["loss_mal_enc_o2m"].item(), (1 + 3 * 0.5**1.5) * LN2, rel_tol=1e-5)
    assert abs(one["loss_bbox_enc_o2m"].item()) < 1e-6 and abs(one["loss_giou_enc_o2m"].item()) < 1e-6
    # the weight scales the dense terms only; k = 0 leaves them out
    half = DFineCriterion(1, use_mal=True, enc_o2m_repeats=2, enc_o2m_weight=0.5)(outputs, _target())
    assert math.isclose(half["loss_giou_enc_o2m"].item(), 0.2, rel_tol=1e-5)
    assert math.isclose(half["loss_mal"].item(), LN2, rel_tol=1e-5)
    assert not any("enc_o2m" in k for k in DFineCriterion(1, use_mal=True)(outputs, _target()))
    assert DFine.loss_group("loss_giou_enc_o2m") == "loss_giou"
    with pytest.raises(ValueError, match="enc_o2m_repeats"):
        DFineCriterion(1, enc_o2m_repeats=-1)


def _models():
    torch.manual_seed(0)
    dense = DFine("n", 2, enc_o2m=4)
    plain = DFine("n", 2)
    plain.load_state_dict(dense.state_dict())  # no parameter of its own: the same state dict
    return dense, plain


def test_dense_outputs_in_training_only():
    dense, plain = _models()
    images = torch.rand(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    dense.train()
    losses = dense(images, targets)
    assert {"loss_mal_enc_o2m", "loss_bbox_enc_o2m", "loss_giou_enc_o2m"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert dense.decoder.enc_bbox_head.layers[-1].weight.grad.abs().sum() > 0
    out = dense.decoder(dense.encoder(dense.backbone(images)), dense._normalise_targets(targets, images))
    # every cell of a 96 px input: 6x6 + 3x3 at strides 16 and 32
    assert out["enc_dense_outputs"]["pred_logits"].shape == (2, 45, 2)
    assert out["enc_dense_outputs"]["pred_boxes"].shape == (2, 45, 4)
    plain.train()
    assert "loss_mal_enc_o2m" not in plain(images, targets)
    dense.eval()
    plain.load_state_dict(dense.state_dict())
    plain.eval()
    with torch.no_grad():
        a, b = dense(images), plain(images)
    assert set(a) == {"pred_logits", "pred_boxes"}
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


def test_enc_o2m_key_reaches_the_loss():
    spec = get_spec("dfine-n")
    assert "enc_o2m" not in spec.options(build_config({"model": "dfine-n"}))
    options = spec.options(build_config({"model": "dfine-n", "enc_o2m": 3}))
    model = spec.build(2, **options)
    assert model.decoder.enc_dense and model.criterion().enc_o2m_repeats == 3
    with pytest.raises(ConfigError):
        build_config({"model": "dfine-n", "enc_o2m": -1})


@pytest.mark.slow  # two ONNX exports: ~15-40 s on 2 shared cores
def test_deploy_graph_unchanged(tmp_path):
    dense, plain = _models()
    files = [export_model(m.eval(), ["a", "b"], "onnx", tmp_path / name, imgsz=64)
             for m, name in ((dense, "dense"), (plain, "plain"))]
    graphs = [onnx.load(str(f)).graph for f in files]
    assert len(graphs[0].node) == len(graphs[1].node)
    assert [n.op_type for n in graphs[0].node] == [n.op_type for n in graphs[1].node]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    runs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in files]
    outs = [s.run(None, {s.get_inputs()[0].name: x}) for s in runs]
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
