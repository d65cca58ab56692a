"""LARS / LAMB trust ratios against hand computations and against the optimizer's real step."""

from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from detforge.config import TrainConfig
from detforge.engine.optim import build_optimizer
from detforge.engine.trust_ratio import TrustRatioLogger, module_group, plot_trust_ratios, read_trust_ratios


class TwoLayer(nn.Module):
    backbone_prefixes = ("backbone.",)
    num_classes = 1

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.backbone.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))  # ||w|| = 5
            self.backbone.bias.copy_(torch.tensor([1.0, -1.0]))
            self.head.weight.copy_(torch.tensor([[1.0, 2.0]]))  # ||w|| = sqrt(5)
            self.head.bias.copy_(torch.tensor([0.5]))


def _set_grads(model: TwoLayer) -> None:
    model.backbone.weight.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # ||g|| = 1
    model.backbone.bias.grad = torch.tensor([0.5, 0.5])
    model.head.weight.grad = torch.tensor([[2.0, 0.0]])  # ||g|| = 2
    model.head.bias.grad = torch.tensor([0.25])


def _lars(model, adapt_all=False):
    cfg = TrainConfig(optimizer="lars", lr0=0.1, momentum=0.9, weight_decay=0.1, lars_trust_coef=0.5,
                      adapt_all=adapt_all, batch=4)
    return build_optimizer(model, cfg, dataset_size=8, iters_per_epoch=2)[0]


def test_lars_ratios_and_step_match_hand_computation(tmp_path):
    model = TwoLayer()
    opt = _lars(model)
    _set_grads(model)
    logger = TrustRatioLogger(model, opt, every=1, out_csv=tmp_path / "trust_ratio.csv")
    ratios = logger.compute()
    # 0.5 * 5 / (1 + 0.1 * 5) = 5/3 and 0.5 * sqrt(5) / (2 + 0.1 * sqrt(5)) = 0.5028020; biases excluded -> 1
    assert ratios["backbone.weight"] == (pytest.approx(5 / 3), True)
    assert ratios["head.weight"] == (pytest.approx(0.5028020), True)
    assert ratios["backbone.bias"] == (1.0, False) and ratios["head.bias"] == (1.0, False)
    assert logger.group_means(ratios) == {"backbone": pytest.approx(5 / 3), "head": pytest.approx(0.5028020)}

    opt.step()  # first momentum step: p -= lr * ratio * (g + wd * w) for adapted, p -= lr * g otherwise
    assert model.backbone.weight.tolist() == [[pytest.approx(2.7833333), pytest.approx(3.9333333)], [0.0, 0.0]]
    assert model.backbone.bias.tolist() == pytest.approx([0.95, -1.05])  # no decay, no adaptation
    assert model.head.weight.tolist()[0] == pytest.approx([0.8944116, 1.9899440])
    assert model.head.bias.item() == pytest.approx(0.475)


def test_adapt_all_gives_biases_a_ratio_and_decay(tmp_path):
    model = TwoLayer()
    opt = _lars(model, adapt_all=True)
    _set_grads(model)
    ratios = TrustRatioLogger(model, opt, 1, tmp_path / "t.csv").compute()
    # bias: 0.5 * sqrt(2) / (sqrt(0.5) + 0.1 * sqrt(2)) = 5/6
    assert ratios["backbone.bias"] == (pytest.approx(5 / 6), True)
    assert ratios["head.bias"] == (pytest.approx(5 / 6), True)  # 0.5 * 0.5 / (0.25 + 0.05)
    opt.step()
    # b - 0.1 * 5/6 * (g + 0.1 * b)
    assert model.backbone.bias.tolist() == pytest.approx([0.95, -1.0333333])


def test_lamb_first_step_matches_hand_computation(tmp_path):
    model = TwoLayer()
    cfg = TrainConfig(optimizer="lamb", lr0=0.01, weight_decay=0.1, batch=4)
    opt = build_optimizer(model, cfg, dataset_size=8, iters_per_epoch=2)[0]
    _set_grads(model)
    ratios = TrustRatioLogger(model, opt, 1, tmp_path / "t.csv").compute()
    # step 1: the Adam direction is g / |g| (0 where g = 0): u = [[1, 0], [0, 0]] + 0.1 * w = [[1.3, 0.4], [0, 0]]
    assert ratios["backbone.weight"][0] == pytest.approx(5 / math.sqrt(1.85), rel=1e-5)
    assert ratios["backbone.bias"] == (1.0, False)
    before = model.backbone.weight.detach().clone()
    opt.step()
    expected = before - 0.01 * (5 / math.sqrt(1.85)) * torch.tensor([[1.3, 0.4], [0.0, 0.0]])
    assert torch.allclose(model.backbone.weight, expected, atol=1e-6)


def test_lamb_ratios_follow_the_optimizer_over_steps(tmp_path):
    # without weight decay, LAMB's step = trust ratio x Adam's step (same betas, eps, bias correction)
    model = TwoLayer().double()  # float64: the step differences below would lose digits in float32
    cfg = TrainConfig(optimizer="lamb", lr0=0.01, weight_decay=0.0, momentum=0.9, batch=4)
    opt = build_optimizer(model, cfg, dataset_size=8, iters_per_epoch=2)[0]
    reference = copy.deepcopy(model)
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-6)
    logger = TrustRatioLogger(model, opt, 1, tmp_path / "t.csv")
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            q.grad = p.grad.clone()
        ratios = logger.compute()
        before = [p.detach().clone() for p in model.parameters()]
        ref_before = [q.detach().clone() for q in reference.parameters()]
        opt.step()
        adam.step()
        for (name, p), b, q, rb in zip(model.named_parameters(), before, reference.parameters(), ref_before):
            ratio, adapted = ratios[name]
            assert adapted == name.endswith("weight")
            assert torch.allclose(b - p.detach(), ratio * (rb - q.detach()), rtol=1e-9, atol=1e-12), name


def test_csv_tensorboard_and_plot(tmp_path):
    class Recorder:  # the part of SummaryWriter the logger uses
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    model = TwoLayer()
    opt = _lars(model)
    out = tmp_path / "run" / "trust_ratio.csv"
    tb = Recorder()
    logger = TrustRatioLogger(model, opt, every=2, out_csv=out, tb_writer=tb)
    for step in range(4):
        _set_grads(model)
        logged = logger.maybe_log(step)
        assert (logged is None) == (step % 2 == 1)
        opt.step()
    with out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "group_or_layer", "trust_ratio"]
    assert [r[0] for r in rows[1:]] == ["0"] * 6 + ["2"] * 6
    first = {r[1]: float(r[2]) for r in rows[1:7]}
    assert first["group/backbone"] == pytest.approx(5 / 3, rel=1e-5)
    assert first["head.weight"] == pytest.approx(0.5028020, rel=1e-5)
    assert first["head.bias"] == 1.0
    assert ("trust_ratio/group/head", pytest.approx(0.5028020), 0) in tb.scalars
    assert len(tb.scalars) == 12

    series = read_trust_ratios(out)
    assert series["group/backbone"][0] == [0, 2]
    png = plot_trust_ratios(out, tmp_path / "plots" / "trust_ratio.png")
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 300
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # lines were drawn, not a blank canvas


def test_plot_and_read_refuse_bad_files(tmp_path):
    only_layers = tmp_path / "layers.csv"
    only_layers.write_text("step,group_or_layer,trust_ratio\n0,head.bias,1\n")
    with pytest.raises(ValueError, match="layers.csv: no 'group/\\*' rows"):
        plot_trust_ratios(only_layers, tmp_path / "x.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,name\n")
    with pytest.raises(ValueError, match="bad.csv: expected the header"):
        read_trust_ratios(bad)
    bad.write_text("step,group_or_layer,trust_ratio\nzero,head.bias,1\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        read_trust_ratios(bad)


def test_module_groups_and_non_lars_refused(tmp_path):
    assert module_group("backbone.stem.conv.weight") == "backbone"
    assert module_group("encoder.input_proj.0.weight") == "encoder"
    assert module_group("neck.lateral.weight") == "encoder"
    assert module_group("decoder.layers.0.linear1.weight") == "decoder"
    assert module_group("roi_heads.box_predictor.weight") == "head"
    assert module_group("query_pos") == "other"
    assert module_group("body.conv1.weight", ("body.",)) == "backbone"
    model = TwoLayer()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="LARS and LAMB only, got SGD"):
        TrustRatioLogger(model, sgd, 1, tmp_path / "t.csv")
    with pytest.raises(ValueError, match="trust_ratio_every"):
        TrustRatioLogger(model, _lars(model), 0, tmp_path / "t.csv")
