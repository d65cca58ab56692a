"""ModelEMA against hand-computed averages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detforge.engine.ema import ModelEMA, ramp_for_run, unwrap_model


def _one_param_model(value: float = 0.0) -> nn.Linear:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_three_updates_match_hand_computation():
    # d_t = 0.9 * (1 - exp(-t / 2)); ema_t = d_t * ema_{t-1} + (1 - d_t) * w_t, ema_0 = 0
    # t=1: d=0.354122, w=1 -> 0.645878; t=2: d=0.568909, w=2 -> 1.229628; t=3: d=0.699183, w=3 -> 1.762186
    model = _one_param_model(0.0)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    expected = [(0.354122406, 0.645877594), (0.568908503, 1.229628249), (0.699182856, 1.762186423)]
    for step, (d_exp, e_exp) in enumerate(expected, start=1):
        with torch.no_grad():
            model.weight.fill_(float(step))
        d = ema.update(model)
        assert d == pytest.approx(d_exp, abs=1e-9)
        assert ema.module.weight.item() == pytest.approx(e_exp, abs=1e-6)
    assert ema.updates == 3
    assert model.weight.item() == 3.0  # the trained model is untouched


def test_no_warmup_uses_constant_decay():
    model = _one_param_model(0.0)
    ema = ModelEMA(model, decay=0.5, warmup=0)
    with torch.no_grad():
        model.weight.fill_(4.0)
    assert ema.update(model) == 0.5
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(3.0)  # 0 -> 2 -> 3


def test_buffers_averaged_and_integer_buffers_copied():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5, warmup=0)
    model.train()
    model(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))  # running_mean 0 -> 0.1 * [2, 4] = [0.2, 0.4]
    model(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))  # -> [0.38, 0.76], num_batches_tracked = 2
    ema.update(model)
    assert ema.module.running_mean.tolist() == pytest.approx([0.19, 0.38])
    assert ema.module.num_batches_tracked.item() == 2
    assert ema.module.num_batches_tracked.dtype == torch.int64


def test_module_is_a_frozen_eval_copy_of_the_unwrapped_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    ema = ModelEMA(wrapped, decay=0.9)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert set(ema.module.state_dict()) == set(model.state_dict())  # no "module." prefix
    ema.update(wrapped)
    assert ema.module[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_state_dict_round_trip():
    model = _one_param_model(0.0)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    state = ema.state_dict()
    assert state["updates"] == 1

    restored = ModelEMA(_one_param_model(5.0), decay=0.9, warmup=2)
    restored.load_state_dict(state)
    assert restored.updates == 1
    assert restored.module.weight.item() == pytest.approx(ema.module.weight.item())
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)
    restored.update(model)
    assert restored.module.weight.item() == pytest.approx(1.229628249, abs=1e-6)  # same as a run never interrupted
    with pytest.raises(KeyError, match="updates"):
        restored.load_state_dict({"module": state["module"]})


def test_bad_decay_refused():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(_one_param_model(), decay=1.0)


def test_ramp_for_run_hand_worked():
    # 325 steps, share 0.15: H = 48.75, W = -325 / ln(1 - (1 - 1/48.75) / 0.9999) = 83.5 -> 84
    assert ramp_for_run(325, 0.9999) == 84
    # the ramp it returns ends the run at a decay whose average spans ~15% of it
    ema = ModelEMA(_one_param_model(), decay=0.9999, warmup=84)
    assert 1 / (1 - ema.decay_at(325)) == pytest.approx(0.15 * 325, rel=0.03)
    # a long run: the share (39750 steps) exceeds what 0.9999 allows; H = 5000 ->
    # W = -265000 / ln(1 - 0.9998 / 0.9999) = 265000 / 9.2104 = 28772
    assert ramp_for_run(265_000, 0.9999) == 28772
    # one step: H = 2 -> W = 1 / ln(1 / (1 - 0.5 / 0.9999)) = 1.44 -> 1
    assert ramp_for_run(1, 0.9999) == 1
    with pytest.raises(ValueError, match="at least 1 step"):
        ramp_for_run(0, 0.9999)


def test_ramp_for_run_keeps_the_average_at_the_end_of_the_run():
    # the weight each step carries in the final average, for a 6500-step run: a fixed 300-step
    # ramp leaves most of it on the first half; the sized ramp puts it on the last fifth
    def mean_step(total, warmup, decay=0.9999):
        ema, prod, mean = ModelEMA(_one_param_model(), decay=decay, warmup=warmup), 1.0, 0.0
        for s in range(total, 0, -1):
            d = ema.decay_at(s)
            mean += s * (1 - d) * prod
            prod *= d
        return mean / total

    assert mean_step(6500, 300) == pytest.approx(0.43, abs=0.01)
    assert mean_step(6500, ramp_for_run(6500, 0.9999)) > 0.9
    assert mean_step(325, ramp_for_run(325, 0.9999)) > 0.85
