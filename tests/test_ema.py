"""ModelEMA against hand-computed averages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detforge.engine.ema import ModelEMA, unwrap_model


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
