"""D-FINE's training-only per-cell class head (``dense_cls``): the cell assignment and the focal
loss on hand-worked cases, the term in training only, and an unchanged inference graph for the
same weights."""

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
from detforge.models.dfine.dense_class import DenseClassHead, dense_class_loss, dense_class_targets
from detforge.models.zoo import get_spec

LN2 = math.log(2.0)


def _one_box(w: float, label: int = 1):
    return [{"boxes": torch.tensor([[0.5, 0.5, w, w]]), "labels": torch.tensor([label])}]


def test_targets_hand_worked():
    """A centred box of side 0.8 on a 4x4 and a 2x2 map, 2 classes. Its middle half spans
    0.3..0.7: on 4x4 the cell centres 0.375 and 0.625 fall in (a 2x2 block, cells 5, 6, 9, 10);
    on 2x2 (centres 0.25, 0.75) none does, but cell 3 holds the box centre (0.5 * 2 = 1 on each
    axis). Five positives, all in class 1."""
    goal = dense_class_targets(_one_box(0.8), [(4, 4), (2, 2)], 2)
    assert goal.shape == (1, 20, 2)
    assert goal[0, :, 0].sum() == 0
    assert torch.nonzero(goal[0, :, 1]).flatten().tolist() == [5, 6, 9, 10, 16 + 3]
    # a small box (side 0.1) has no cell centre in its middle: only the cell holding its centre
    small = dense_class_targets(_one_box(0.1, label=0), [(4, 4)], 2)
    assert torch.nonzero(small[0, :, 0]).flatten().tolist() == [10]
    # two overlapping objects of different classes: the shared cells are positive for both
    both = [{"boxes": torch.tensor([[0.5, 0.5, 0.8, 0.8], [0.5, 0.5, 0.4, 0.4]]), "labels": torch.tensor([1, 0])}]
    goal = dense_class_targets(both, [(4, 4)], 2)
    assert goal[0, 10].tolist() == [1.0, 1.0] and goal.max() == 1.0
    # an empty image is all background
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    assert dense_class_targets(empty, [(4, 4)], 2).sum() == 0


def test_loss_hand_worked():
    """Every logit 0 (p = 0.5): a positive costs alpha (1 - p)^2 ln 2 = 0.0625 ln 2, a negative
    (1 - alpha) p^2 ln 2 = 0.1875 ln 2. 5 positives and 35 negatives over 5 positives."""
    logits = [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]
    loss = dense_class_loss(logits, _one_box(0.8))
    assert math.isclose(loss.item(), (5 * 0.0625 + 35 * 0.1875) * LN2 / 5, rel_tol=1e-6)
    # no objects: divided by 1, not by 0
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    assert math.isclose(dense_class_loss(logits, empty).item(), 40 * 0.1875 * LN2, rel_tol=1e-6)


def test_head_starts_at_the_prior():
    head = DenseClassHead(32, 3)
    out = head([torch.randn(2, 32, 5, 5), torch.randn(2, 32, 3, 3)])
    assert [tuple(o.shape) for o in out] == [(2, 3, 5, 5), (2, 3, 3, 3)]
    assert torch.allclose(torch.sigmoid(head.logits.bias), torch.full((3,), 0.01))


def _models():
    torch.manual_seed(0)
    model = DFine("n", 2, dense_cls=0.5)
    plain = DFine("n", 2)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("dense_class_head.") for k in unexpected)
    return model, plain


def test_term_in_training_only_and_same_eval_outputs():
    model, plain = _models()
    images = torch.rand(2, 3, 96, 96)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    model.train()
    losses = model(images, targets)
    assert torch.isfinite(losses["loss_densecls"]) and losses["loss_densecls"] > 0
    assert DFine.loss_group("loss_densecls") == "loss_densecls"
    sum(losses.values()).backward()
    assert model.dense_class_head.logits.weight.grad.abs().sum() > 0
    plain.train()
    assert "loss_densecls" not in plain(images, targets)
    model.eval(), plain.eval()
    with torch.no_grad():
        a, b = model(images), plain(images)
    assert torch.equal(a["pred_logits"], b["pred_logits"]) and torch.equal(a["pred_boxes"], b["pred_boxes"])
    model.deploy()
    assert not hasattr(model, "dense_class_head")
    assert not any(k.startswith("dense_class_head.") for k in model.state_dict())


def test_key_reaches_the_model():
    spec = get_spec("dfine-n")
    assert "dense_cls" not in spec.options(build_config({"model": "dfine-n"}))
    model = spec.build(2, **spec.options(build_config({"model": "dfine-n", "dense_cls": 2.0})))
    assert model.dense_cls == 2.0 and isinstance(model.dense_class_head, DenseClassHead)
    with pytest.raises(ConfigError):
        build_config({"model": "dfine-n", "dense_cls": -1})


@pytest.mark.slow  # two ONNX exports: ~15-40 s on 2 shared cores
def test_deploy_graph_unchanged(tmp_path):
    model, plain = _models()
    files = [export_model(m.eval(), ["a", "b"], "onnx", tmp_path / name, imgsz=64)
             for m, name in ((model, "extra"), (plain, "plain"))]
    graphs = [onnx.load(str(f)).graph for f in files]
    assert [n.op_type for n in graphs[0].node] == [n.op_type for n in graphs[1].node]
    assert [o.name for o in graphs[0].output] == [o.name for o in graphs[1].output]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    runs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in files]
    for a, b in zip(*[s.run(None, {s.get_inputs()[0].name: x}) for s in runs]):
        np.testing.assert_array_equal(a, b)
