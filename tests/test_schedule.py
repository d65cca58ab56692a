"""LR schedule values against hand-computed numbers (T = 100 steps, W = 10 warm-up steps, lrf = 0.01)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from detforge.config import TrainConfig
from detforge.engine.schedule import LRSchedule


def _sched(**kw) -> LRSchedule:
    kw.setdefault("lrf", 0.01)
    kw.setdefault("warmup_epochs", 1)
    kw.setdefault("warmup_max_fraction", 0.0)  # these tests choose their warm-up
    ipe = kw.pop("ipe", 10)
    epochs = kw.pop("total_epochs", 10)
    opts = {k: kw.pop(k) for k in ("step_per_epoch", "warmup_every_cycle") if k in kw}
    return LRSchedule(TrainConfig(**kw), ipe, epochs, **opts)


def test_cosine_values():
    s = _sched(scheduler="cosine")
    assert s.factor(0) == 0.0
    assert s.factor(5) == pytest.approx(0.5)  # half-way through warm-up
    assert s.factor(10) == pytest.approx(1.0)  # end of warm-up
    assert s.factor(40) == pytest.approx(0.7525)  # p = 1/3: 0.01 + 0.99 * (1 + 0.5) / 2
    assert s.factor(55) == pytest.approx(0.505)  # middle of the decay: 0.01 + 0.99 / 2
    assert s.factor(100) == pytest.approx(0.01)  # end: lrf
    assert s.factor(150) == pytest.approx(0.01)


def test_linear_values():
    s = _sched(scheduler="linear")
    assert (s.factor(0), s.factor(10)) == (0.0, pytest.approx(1.0))
    assert s.factor(40) == pytest.approx(1 - 0.99 / 3)
    assert s.factor(55) == pytest.approx(0.505)
    assert s.factor(100) == pytest.approx(0.01)


def test_step_values():
    s = _sched(scheduler="step", step_milestones=[0.7, 0.9], step_gamma=0.1)
    assert s.factor(5) == pytest.approx(0.5)
    assert s.factor(69) == 1.0
    assert s.factor(70) == pytest.approx(0.1)
    assert s.factor(89) == pytest.approx(0.1)
    assert s.factor(90) == pytest.approx(0.01)


def test_constant_values():
    s = _sched(scheduler="constant")
    assert (s.factor(0), s.factor(5), s.factor(10), s.factor(99)) == (0.0, 0.5, 1.0, 1.0)


def test_onecycle_values_ignore_warmup():
    s = _sched(scheduler="onecycle")
    assert s.factor(0) == pytest.approx(0.04)  # 1 / div_factor 25
    assert s.factor(5) == pytest.approx(1 - 0.48 * (1 + math.cos(math.pi / 6)))  # 0.104308
    assert s.factor(15) == pytest.approx(0.52)  # half-way up: 1 - 0.96 / 2
    assert s.factor(30) == pytest.approx(1.0)  # peak at 30 %
    assert s.factor(65) == pytest.approx(0.505)  # half-way down
    assert s.factor(100) == pytest.approx(0.01)


def test_warmup_iters_override_epochs():
    s = _sched(scheduler="cosine", warmup_iters=4)
    assert (s.factor(2), s.factor(4)) == (0.5, 1.0)
    assert s.factor(52) == pytest.approx(0.505)  # p = 48 / 96


def test_sgdr_cycle_boundaries():
    # cycles of 20, 40, 80 steps peaking at 1, 0.5, 0.25; no warm-up
    s = _sched(scheduler="sgdr", warmup_epochs=0, sgdr_cycle=2, sgdr_mult=2, sgdr_decay=0.5, total_epochs=14)
    assert s.factor(0) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(0.505)
    assert s.factor(19) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert s.factor(20) == pytest.approx(0.5)  # first restart
    assert s.factor(40) == pytest.approx(0.255)  # middle of cycle 2: 0.01 + 0.49 / 2
    assert s.factor(60) == pytest.approx(0.25)  # second restart
    assert s.factor(100) == pytest.approx(0.13)  # 0.01 + 0.24 / 2
    assert s.factor(140) == pytest.approx(0.125)  # third restart at 0.125


def test_sgdr_warmup_first_cycle_only():
    s = _sched(scheduler="sgdr", warmup_epochs=1, sgdr_cycle=2, sgdr_mult=1, sgdr_decay=0.5)
    assert (s.factor(0), s.factor(5), s.factor(10)) == (0.0, 0.5, pytest.approx(1.0))
    assert s.factor(20) == pytest.approx(0.505)
    assert s.factor(30) == pytest.approx(0.5)  # restart 20 steps after the warm-up, no second ramp
    assert s.factor(50) == pytest.approx(0.25)


def test_sgdr_warmup_every_cycle():
    s = _sched(scheduler="sgdr", warmup_iters=5, sgdr_cycle=2, sgdr_mult=1, sgdr_decay=0.5, warmup_every_cycle=True)
    assert (s.factor(0), s.factor(5)) == (0.0, pytest.approx(1.0))
    assert s.factor(15) == pytest.approx(0.2575)  # cosine 2/3 of the way: 0.01 + 0.99 * 0.25
    assert s.factor(20) == 0.0  # restart begins with a ramp
    assert s.factor(22) == pytest.approx(0.5 * 2 / 5)
    assert s.factor(25) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="does not fit"):
        _sched(scheduler="sgdr", warmup_iters=20, sgdr_cycle=2, warmup_every_cycle=True)


def test_per_epoch_stepping_for_cooldet():
    s = _sched(scheduler="cosine", step_per_epoch=True)
    assert s.step_per_epoch
    assert s.factor(5) == pytest.approx(0.5)  # the warm-up still ramps per step
    assert s.factor(40) == s.factor(49) == pytest.approx(0.7525)
    assert s.factor(50) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(4 * math.pi / 9)))
    assert not _sched(scheduler="cosine").step_per_epoch


def _optimizer():
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD(
        [{"params": [a], "name": "decay", "lr": 0.01}, {"params": [b], "name": "no_decay", "lr": 0.01}], lr=0.01
    )


def test_step_sets_group_lrs_and_bias_warmup():
    opt = _optimizer()
    s = _sched(scheduler="cosine", warmup_bias_lr=0.1)
    assert s.step(opt, 0) == 0.0
    assert [g["initial_lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1)
    s.step(opt, 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.055)  # 0.1 + (0.01 - 0.1) / 2
    s.step(opt, 10)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.01)] * 2
    assert s.step(opt, 55) == pytest.approx(0.00505)


def test_state_dict_round_trip_and_mismatch_warning(caplog):
    s = _sched(scheduler="cosine")
    s.step(_optimizer(), 37)
    state = s.state_dict()
    t = _sched(scheduler="cosine")
    t.load_state_dict(state)
    assert t.last_it == 37
    longer = _sched(scheduler="cosine", total_epochs=20)
    with caplog.at_level(logging.WARNING, logger="detforge"):
        longer.load_state_dict(state)
    assert "differs from the checkpoint" in caplog.text and longer.last_it == 37


def test_lr_tail_holds_lrf_after_an_earlier_decay():
    # 10 epochs x 10 steps, 2 tail epochs: the cosine runs over steps 10..80, then stays at lrf
    s = _sched(scheduler="cosine", lr_tail_epochs=2)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(45) == pytest.approx(0.505)  # middle of the 70-step decay
    assert s.factor(80) == pytest.approx(0.01)
    assert [s.factor(t) for t in (81, 90, 99)] == [pytest.approx(0.01)] * 3
    lin = _sched(scheduler="linear", lr_tail_epochs=2)
    assert lin.factor(45) == pytest.approx(0.505) and lin.factor(95) == pytest.approx(0.01)
    # without a tail nothing moves: the decay still ends at T = 100
    assert _sched(scheduler="cosine", lr_tail_epochs=0).factor(55) == pytest.approx(0.505)
    # step milestones stay fractions of the whole run
    assert _sched(scheduler="step", lr_tail_epochs=2).factor(69) == 1.0


def test_lr_tail_that_leaves_no_decay_is_refused():
    with pytest.raises(ValueError, match="lr_tail_epochs=9 leaves 10 of 100 steps"):
        _sched(scheduler="cosine", lr_tail_epochs=9)
