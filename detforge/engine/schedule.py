"""Per-iteration learning-rate schedule: ``lr(t) = group["initial_lr"] * factor(t)`` for every group.

``t`` counts optimizer steps from 0; a run has ``T = iters_per_epoch * total_epochs`` of them
and ``W`` warm-up steps (``warmup_iters``, else ``round(warmup_epochs * iters_per_epoch)``).

- warm-up: ``factor = t / W`` (0 at the first step, 1 at ``t = W``); groups named ``*no_decay``
  (biases, norms) instead go linearly from the absolute lr ``warmup_bias_lr`` to their target
  when ``warmup_bias_lr > 0`` (Ultralytics' bias warm-up).
- then, with ``p = (t - W) / (T - W)`` running from 0 to 1 over the rest of the run:
  ``cosine``  ``lrf + (1 - lrf) * (1 + cos(pi p)) / 2``;
  ``linear``  ``1 - (1 - lrf) * p``;
  ``step``    ``step_gamma ** (number of step_milestones m with t >= m * T)`` (fractions of the run);
  ``constant`` 1.
- ``onecycle`` (PyTorch's OneCycleLR shape, its own ramp instead of the warm-up): cosine from
  1/25 (PyTorch's ``div_factor``) up to 1 at 30% of the run, then cosine down to ``lrf`` at ``T``.
- ``lr_tail_epochs`` (cosine, linear, onecycle): the decay ends ``lr_tail_epochs * iters_per_epoch``
  steps before ``T`` and the factor stays at ``lrf`` for those last steps (DEIM's flat tail, which
  runs its no-augmentation epochs at the minimum lr); ``T`` above reads as that earlier end.
- ``sgdr`` (Loshchilov & Hutter): cosine from the cycle's peak to ``lrf`` over each cycle, then a
  restart. Cycle k lasts ``sgdr_cycle * sgdr_mult**k`` epochs and peaks at ``sgdr_decay**k``. The
  warm-up runs once before the first cycle, or (``warmup_every_cycle=True``) at the start of
  every cycle, ramping from 0 to that cycle's peak.

``step_per_epoch=True`` holds the post-warm-up factor constant through each epoch at the value of
the epoch's first step (the warm-up still ramps per step), as in torchvision's detection recipe
that CoolDet trains with; ``None`` turns it on for ``recipe=cooldet``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from detforge.config import TrainConfig

LOG = logging.getLogger("detforge")

ONECYCLE_START = 1.0 / 25.0  # PyTorch OneCycleLR div_factor
ONECYCLE_PEAK_AT = 0.3  # PyTorch OneCycleLR pct_start


def _cos_between(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from ``start`` (pct=0) to ``end`` (pct=1)."""
    pct = min(max(pct, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * pct))


class LRSchedule:
    def __init__(
        self,
        cfg: TrainConfig,
        iters_per_epoch: int,
        total_epochs: int,
        *,
        step_per_epoch: bool | None = None,
        warmup_every_cycle: bool = False,
    ) -> None:
        if iters_per_epoch < 1 or total_epochs < 1:
            raise ValueError(f"LRSchedule needs iters_per_epoch >= 1 and total_epochs >= 1, got {iters_per_epoch}, {total_epochs}")
        self.kind = cfg.scheduler
        self.iters_per_epoch = int(iters_per_epoch)
        self.total_iters = self.iters_per_epoch * int(total_epochs)
        warmup = cfg.warmup_iters if cfg.warmup_iters is not None else round(cfg.warmup_epochs * iters_per_epoch)
        cap_fraction = float(getattr(cfg, "warmup_max_fraction", 0.0) or 0.0)
        if cap_fraction > 0 and warmup > max(1, round(cap_fraction * self.total_iters)):
            # a COCO-sized warm-up (500 steps, 3 epochs) can outlast a whole run on a few
            # hundred images; the resolved config leaves the cap at 0 when the user chose one
            cap = max(1, round(cap_fraction * self.total_iters))
            LOG.info("warm-up: %d steps would be %.0f%% of this %d-step run; using %d (set warmup_iters to override)",
                     warmup, 100 * warmup / self.total_iters, self.total_iters, cap)
            warmup = cap
        self.warmup_iters = 0 if self.kind == "onecycle" else int(warmup)
        self.lrf = cfg.lrf
        # the decay's end: the run's end, or the start of a tail held at lrf
        tail_iters = round(cfg.lr_tail_epochs * self.iters_per_epoch)
        self.decay_end = self.total_iters - tail_iters
        if tail_iters > 0 and self.kind in ("cosine", "linear", "onecycle") and self.decay_end <= self.warmup_iters:
            raise ValueError(
                f"lr_tail_epochs={cfg.lr_tail_epochs:g} leaves {max(self.decay_end, 0)} of {self.total_iters} steps for the "
                f"warm-up ({self.warmup_iters} steps) and the decay; shorten lr_tail_epochs or the warm-up"
            )
        self.warmup_bias_lr = cfg.warmup_bias_lr
        self.milestones = sorted(cfg.step_milestones)
        self.gamma = cfg.step_gamma
        self.sgdr_cycle_iters = cfg.sgdr_cycle * self.iters_per_epoch
        self.sgdr_mult = cfg.sgdr_mult
        self.sgdr_decay = cfg.sgdr_decay
        self.warmup_every_cycle = warmup_every_cycle
        self.step_per_epoch = bool(cfg.step_per_epoch) if step_per_epoch is None else step_per_epoch
        if warmup_every_cycle and self.kind == "sgdr" and self.warmup_iters >= self.sgdr_cycle_iters:
            raise ValueError(
                f"warm-up of {self.warmup_iters} steps does not fit in an SGDR cycle of {self.sgdr_cycle_iters:g} steps "
                "(sgdr_cycle epochs x iterations per epoch); shorten warmup_epochs/warmup_iters or lengthen sgdr_cycle"
            )
        self.last_it = 0

    # ------------------------------------------------------------------ factor
    def _decay_time(self, it: int) -> int:
        """The step the decay phase reads: ``it``, or the first step of its epoch."""
        if not self.step_per_epoch:
            return it
        return max(self.warmup_iters, (it // self.iters_per_epoch) * self.iters_per_epoch)

    def _sgdr(self, it: int) -> float:
        w = self.warmup_iters
        if not self.warmup_every_cycle:
            if it < w:
                return it / w
            t = self._decay_time(it) - w
        else:
            t = self._decay_time(it) if it >= w else it
        start, length, k = 0.0, self.sgdr_cycle_iters, 0
        while t >= start + length:
            start += length
            length *= self.sgdr_mult
            k += 1
        peak = self.sgdr_decay ** k
        tc = t - start
        if self.warmup_every_cycle and w > 0:
            if tc < w:
                return peak * tc / w
            return _cos_between(peak, self.lrf, (tc - w) / (length - w))
        return _cos_between(peak, self.lrf, tc / length)

    def factor(self, it: int) -> float:
        it = max(0, int(it))
        T, W = self.decay_end, self.warmup_iters
        if self.kind == "onecycle":
            peak_at = ONECYCLE_PEAK_AT * T
            if it < peak_at:
                return _cos_between(ONECYCLE_START, 1.0, it / peak_at)
            return _cos_between(1.0, self.lrf, (it - peak_at) / (T - peak_at))
        if self.kind == "sgdr":
            return self._sgdr(it)
        if it < W:
            return it / W
        t = self._decay_time(it)
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** sum(t >= m * self.total_iters for m in self.milestones)
        p = min(max((t - W) / (T - W), 0.0), 1.0) if T > W else 1.0
        if self.kind == "cosine":
            return _cos_between(1.0, self.lrf, p)
        if self.kind == "linear":
            return 1.0 - (1.0 - self.lrf) * p
        raise ValueError(f"scheduler={self.kind!r}: allowed values are cosine, step, onecycle, linear, constant, sgdr")

    # ------------------------------------------------------------------ apply
    def step(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every group's lr for step ``it``; returns group 0's lr."""
        self.last_it = int(it)
        f = self.factor(it)
        W = self.warmup_iters
        bias_warmup = self.warmup_bias_lr > 0 and 0 <= it < W and self.kind != "onecycle"
        for group in optimizer.param_groups:
            initial = group.setdefault("initial_lr", group["lr"])
            if bias_warmup and str(group.get("name", "")).endswith("no_decay"):
                target = initial * self.factor(W)
                group["lr"] = self.warmup_bias_lr + (target - self.warmup_bias_lr) * it / W
            else:
                group["lr"] = initial * f
        return optimizer.param_groups[0]["lr"]

    def _signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "total_iters": self.total_iters, "warmup_iters": self.warmup_iters,
            "iters_per_epoch": self.iters_per_epoch,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"last_it": self.last_it, **self._signature()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "last_it" not in state:
            raise KeyError(f"schedule state has no 'last_it' entry (keys: {sorted(state)})")
        self.last_it = int(state["last_it"])
        saved = {k: state.get(k) for k in self._signature()}
        if saved != self._signature():
            LOG.warning(
                "lr schedule differs from the checkpoint's (%s now, %s saved): continuing at step %d on the new one",
                self._signature(), saved, self.last_it,
            )
