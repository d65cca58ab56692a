"""Exponential moving average of model weights, with a warm-up ramp on the decay.

After the t-th update (t = 1, 2, ...) every floating-point parameter and buffer becomes
``ema = d_t * ema + (1 - d_t) * model`` with ``d_t = decay * (1 - exp(-t / warmup))``, the ramp
used by Ultralytics and D-FINE (there ``warmup`` = 2000): early on the average follows the
model closely, later it settles to ``decay``. ``warmup=0`` uses ``decay`` from the first update.
Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) are copied, not averaged.

A fixed ramp suits one run length only. With ``decay`` = 0.9999 (an average over ~10k steps)
the ramp decides how far back the final average reaches: a run much longer than the ramp, but
shorter than ~10k steps, ends with an average still weighted towards the weights of the ramp's
end (a 300-step ramp in a 6500-step run: mean step of the average at 43% of the run), and a run
shorter than the ramp barely averages at all. ``ramp_for_run`` sizes the ramp from the run's
step count instead, so the final decay spans a set share of the run (``warmup=auto``).

Written here rather than taken from timm: timm's ModelEmaV3 ramps the decay as
``1 - (1 + t / gamma) ** -power``, a different curve from the one the recipes above were tuned with.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


# share of the run that the final EMA average spans with ``ema_warmup=auto``: about the
# no-augmentation tail of the D-FINE recipe (15% of the epochs)
EMA_RUN_SHARE = 0.15


def ramp_for_run(total_steps: int, decay: float, share: float = EMA_RUN_SHARE) -> int:
    """The ramp (steps) whose decay after ``total_steps`` updates is ``1 - 1 / H``, an average
    over the last H = ``share`` x ``total_steps`` steps (at least 2; at most half the horizon
    1 / (1 - decay) that ``decay`` itself allows, which long runs reach anyway)."""
    if total_steps < 1:
        raise ValueError(f"EMA ramp: the run must have at least 1 step, got {total_steps}")
    if not 0 < share <= 1:
        raise ValueError(f"EMA ramp: share must be in (0, 1], got {share}")
    horizon = min(max(2.0, share * total_steps), 0.5 / (1.0 - decay))
    # decay * (1 - exp(-T / W)) = 1 - 1 / H  ->  W = -T / ln(1 - (1 - 1 / H) / decay)
    return max(1, round(-total_steps / math.log(1.0 - (1.0 - 1.0 / horizon) / decay)))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / FSDP(1) wrappers and ``torch.compile``."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if isinstance(inner, nn.Module):
            model = inner
            continue
        inner = getattr(model, "module", None)  # DDP, DataParallel, FullyShardedDataParallel
        if isinstance(inner, nn.Module):
            model = inner
            continue
        return model


class ModelEMA:
    """EMA copy of a model: ``.module`` (eval mode, no grads), ``.update(model)``, ``.updates``."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: int = 2000) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup < 0:
            raise ValueError(f"EMA warmup must be >= 0 iterations, got {warmup}")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = int(warmup)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """Decay applied at the ``updates``-th update (1-based)."""
        if self.warmup == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the current weights of ``model`` into the average; returns the decay used."""
        self.updates += 1
        d = self.decay_at(self.updates)
        model_sd = unwrap_model(model).state_dict()
        ema_sd = self.module.state_dict()
        missing = set(ema_sd) - set(model_sd)
        if missing:
            raise KeyError(f"EMA update: the model lacks {len(missing)} tensors of the EMA copy, e.g. {sorted(missing)[:3]}")
        ema_float, model_float = [], []
        for key, ema_t in ema_sd.items():
            src = model_sd[key].detach()
            if ema_t.is_floating_point():
                ema_float.append(ema_t)
                model_float.append(src.to(dtype=ema_t.dtype))
            else:
                ema_t.copy_(src)
        if ema_float:
            # ema + (1 - d) * (model - ema) == d * ema + (1 - d) * model
            torch._foreach_lerp_(ema_float, model_float, 1.0 - d)
        return d

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("module", "updates"):
            if key not in state:
                raise KeyError(f"EMA state has no '{key}' entry (keys: {sorted(state)})")
        self.module.load_state_dict(state["module"])
        # decay / warmup stay as configured: the saved values are for the record only
        self.updates = int(state["updates"])
