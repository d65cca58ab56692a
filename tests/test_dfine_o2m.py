"""D-FINE's training-only one-to-many supervision: the extra query group (``o2m``) and the dense
encoder cells (``enc_o2m``). For each, the loss on a hand-worked case, the extra outputs in
training only, and an unchanged inference graph for the same weights."""

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
from detforge.models.dfine.criterion import DFineCriterion, _o2m_name, repeat_targets
from detforge.models.dfine.decoder import group_attention_mask
from detforge.models.zoo import get_spec

LN2 = math.log(2.0)
TARGET = [0.5, 0.5, 0.2, 0.4]  # normalised cxcywh: xyxy 0.4, 0.3, 0.6, 0.7


def _target():
    return [{"boxes": torch.tensor([TARGET]), "labels": torch.tensor([0])}]


def _two_exact_queries():
    # two queries, both exactly on the target box, logit 0 (p = 0.5)
    boxes = torch.tensor([[TARGET, TARGET]])
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


O2M = {"o2m": 4, "o2m_queries": 40}
ENC_O2M = {"enc_o2m": 4}


def _models(**extra):
    """A D-FINE-N trained with ``extra`` and a plain one holding the same weights."""
    torch.manual_seed(0)
    with_extra = DFine("n", 2, **extra)
    plain = DFine("n", 2)
    plain.load_state_dict(with_extra.state_dict())  # no parameter of its own: the same state dict
    return with_extra, plain


def _images_and_targets():
    images = torch.rand(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    return images, targets


def _assert_same_eval_outputs(model, plain, images):
    model.eval()
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        a, b = model(images), plain(images)
    assert set(a) == {"pred_logits", "pred_boxes"}
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])


@pytest.mark.parametrize("extra, terms, key, shape", [
    (O2M, {"loss_mal_o2m", "loss_fgl_o2m_aux_0", "loss_giou_o2m_pre"}, "o2m_outputs", (2, 40, 2)),
    # every encoder cell of a 96 px input: 6x6 + 3x3 at strides 16 and 32
    (ENC_O2M, {"loss_mal_enc_o2m", "loss_bbox_enc_o2m", "loss_giou_enc_o2m"}, "enc_dense_outputs", (2, 45, 2)),
], ids=["o2m", "enc_o2m"])
def test_extra_outputs_in_training_only(extra, terms, key, shape):
    model, plain = _models(**extra)
    images, targets = _images_and_targets()
    model.train()
    losses = model(images, targets)
    assert terms <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    out = model.decoder(model.encoder(model.backbone(images)), model._normalise_targets(targets, images))
    assert out[key]["pred_logits"].shape == shape and out[key]["pred_boxes"].shape == (*shape[:2], 4)
    assert out["pred_logits"].shape[1] == 45  # one-to-one queries: every cell of 96 px
    assert "enc_aux_outputs" not in out[key]
    plain.train()
    assert not terms & set(plain(images, targets))
    _assert_same_eval_outputs(model, plain, images)


@pytest.mark.slow  # two ONNX exports per case: ~15-40 s on 2 shared cores
@pytest.mark.parametrize("extra", [O2M, ENC_O2M], ids=["o2m", "enc_o2m"])
def test_deploy_graph_unchanged(tmp_path, extra):
    model, plain = _models(**extra)
    files = [export_model(m.eval(), ["a", "b"], "onnx", tmp_path / name, imgsz=64)
             for m, name in ((model, "extra"), (plain, "plain"))]
    graphs = [onnx.load(str(f)).graph for f in files]
    assert len(graphs[0].node) == len(graphs[1].node)
    assert [n.op_type for n in graphs[0].node] == [n.op_type for n in graphs[1].node]
    assert [o.name for o in graphs[0].output] == [o.name for o in graphs[1].output]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    runs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in files]
    outs = [s.run(None, {s.get_inputs()[0].name: x}) for s in runs]
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# ---- dense one-to-many supervision of the encoder cells (enc_o2m)

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


def test_enc_o2m_key_reaches_the_loss():
    spec = get_spec("dfine-n")
    assert "enc_o2m" not in spec.options(build_config({"model": "dfine-n"}))
    options = spec.options(build_config({"model": "dfine-n", "enc_o2m": 3}))
    model = spec.build(2, **options)
    assert model.decoder.enc_dense and model.criterion().enc_o2m_repeats == 3
    with pytest.raises(ConfigError):
        build_config({"model": "dfine-n", "enc_o2m": -1})
