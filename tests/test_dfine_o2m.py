"""D-FINE's training-only one-to-many query group (``o2m``): the loss on a hand-worked case, the
attention mask between the groups, and an unchanged inference graph for the same weights."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from detforge.export import export_model
from detforge.models.dfine import DFine
from detforge.models.dfine.criterion import DFineCriterion, _o2m_name, repeat_targets
from detforge.models.dfine.decoder import group_attention_mask

LN2 = math.log(2.0)


def _target():
    # one object, normalised cxcywh
    return [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.tensor([0])}]


def _two_exact_queries():
    # two queries, both exactly on the target box, logit 0 (p = 0.5)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.2, 0.4]]])
    return {"pred_logits": torch.zeros(1, 2, 1), "pred_boxes": boxes}


def test_o2m_loss_hand_worked():
    """VFL, IoU 1 everywhere. One-to-one: one positive (BCE(0, 1) = ln 2, weight 1) and one
    negative (BCE(0, 0) = ln 2, weight alpha * p**gamma = 0.75 * 0.25), over 1 box: 1.1875 ln 2.
    One-to-many with k = 2: the target twice, both queries positive: 2 ln 2 over 2 boxes = ln 2.
    Boxes are exact, so every L1 / GIoU term is 0."""
    outputs = {**_two_exact_queries(), "o2m_outputs": _two_exact_queries()}
    crit = DFineCriterion(1, use_mal=False, o2m_repeats=2)
    losses = crit(outputs, _target())
    assert set(losses) == {"loss_vfl", "loss_bbox", "loss_giou", "loss_vfl_o2m", "loss_bbox_o2m", "loss_giou_o2m"}
    assert math.isclose(losses["loss_vfl"].item(), 1.1875 * LN2, rel_tol=1e-5)
    assert math.isclose(losses["loss_vfl_o2m"].item(), LN2, rel_tol=1e-5)
    for key in ("loss_bbox", "loss_giou", "loss_bbox_o2m", "loss_giou_o2m"):
        assert abs(losses[key].item()) < 1e-6
    # the weight scales the one-to-many terms only; k = 0 leaves them out
    half = DFineCriterion(1, use_mal=False, o2m_repeats=2, o2m_weight=0.5)(outputs, _target())
    assert math.isclose(half["loss_vfl_o2m"].item(), 0.5 * LN2, rel_tol=1e-5)
    assert math.isclose(half["loss_vfl"].item(), 1.1875 * LN2, rel_tol=1e-5)
    assert set(DFineCriterion(1, use_mal=False)(outputs, _target())) == {"loss_vfl", "loss_bbox", "loss_giou"}


def test_repeat_targets_and_names():
    t = [{"boxes": torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.1, 0.1]]), "labels": torch.tensor([2, 0]),
          "weights": torch.tensor([1.0, 0.5])}]
    r = repeat_targets(t, 3)[0]
    assert r["labels"].tolist() == [2, 0, 2, 0, 2, 0]
    assert r["weights"].tolist() == [1.0, 0.5] * 3
    assert torch.equal(r["boxes"][4:], t[0]["boxes"])
    assert _o2m_name("loss_mal_aux_0") == "loss_mal_o2m_aux_0"
    assert _o2m_name("loss_fgl") == "loss_fgl_o2m"
    assert DFine.loss_group("loss_fgl_o2m_aux_1") == "loss_fgl"
    assert DFine.loss_group("loss_mal_o2m_pre") == "loss_mal"


def test_group_attention_mask():
    dn = torch.tensor([[False, True, True], [True, False, True], [True, True, False]])
    m = group_attention_mask(dn, 3, 2, torch.device("cpu"))
    expected = torch.tensor([
        [0, 1, 1, 1, 1],
        [1, 0, 1, 1, 1],
        [1, 1, 0, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
    ], dtype=torch.bool)
    assert torch.equal(m, expected)
    plain = group_attention_mask(None, 2, 1, torch.device("cpu"))
    assert plain.tolist() == [[False, False, True], [False, False, True], [True, True, False]]


def _models():
    torch.manual_seed(0)
    with_o2m = DFine("n", 2, o2m=4, o2m_queries=40)
    plain = DFine("n", 2)
    plain.load_state_dict(with_o2m.state_dict())  # no parameter of its own: the same state dict
    return with_o2m, plain


def test_o2m_group_in_training_only():
    with_o2m, plain = _models()
    images = torch.rand(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    with_o2m.train()
    losses = with_o2m(images, targets)
    assert {"loss_mal_o2m", "loss_fgl_o2m_aux_0", "loss_giou_o2m_pre"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    out = with_o2m.decoder(with_o2m.encoder(with_o2m.backbone(images)), with_o2m._normalise_targets(targets, images))
    assert out["o2m_outputs"]["pred_logits"].shape == (2, 40, 2)
    assert out["pred_logits"].shape[1] == 45  # one-to-one queries: every cell of 96 px (6x6 + 3x3)
    assert "enc_aux_outputs" not in out["o2m_outputs"]
    with_o2m.eval()
    plain.load_state_dict(with_o2m.state_dict())
    plain.eval()
    with torch.no_grad():
        a, b = with_o2m(images), plain(images)
    assert set(a) == {"pred_logits", "pred_boxes"}
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


@pytest.mark.slow  # two ONNX exports: ~15-40 s on 2 shared cores
def test_deploy_graph_unchanged(tmp_path):
    with_o2m, plain = _models()
    files = [export_model(m.eval(), ["a", "b"], "onnx", tmp_path / name, imgsz=64)
             for m, name in ((with_o2m, "o2m"), (plain, "plain"))]
    graphs = [onnx.load(str(f)).graph for f in files]
    assert len(graphs[0].node) == len(graphs[1].node)
    assert [n.op_type for n in graphs[0].node] == [n.op_type for n in graphs[1].node]
    assert [o.name for o in graphs[0].output] == [o.name for o in graphs[1].output]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    runs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in files]
    outs = [s.run(None, {s.get_inputs()[0].name: x}) for s in runs]
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
