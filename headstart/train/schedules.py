"""Learning-rate schedules with per-iteration granularity, linear warm-up and exact resume.

Every schedule is a factor ``f(step)`` multiplying each parameter group's initial LR (so the
backbone/classifier ratios of ``build_param_groups`` are kept). Time ``t = step / steps_per_epoch``
is in (fractional) epochs from the start of training; the warm-up ramp ``min(1, (step+1)/W)``
multiplies the schedule, so the LR is continuous when warm-up ends and the first step is not wasted
at LR 0. ``min_lr_ratio`` is the floor of every decaying schedule (the end point of cosine/SGDR).

    constant      1
    step          gamma ** floor(t / step_size)
    exponential   gamma ** t                      (smooth, per step)
    inverse_time  1 / (1 + decay * t)
    cosine        min + (1 - min) * (1 + cos(pi * t / epochs)) / 2
    sgdr          cosine within cycles of t0, t0*t_mult, t0*t_mult**2 ... epochs, restarting at 1
    plateau       1, times plateau_factor whenever the validation loss has not improved for
                  more than plateau_patience epochs (as torch's ReduceLROnPlateau)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from headstart.errors import ConfigError
from headstart.train.options import SCHEDULES, ScheduleConfig

__all__ = ["SCHEDULES", "LRSchedule", "ScheduleConfig", "cycle_ends", "lr_sequence"]

_PLATEAU_THRESHOLD = 1e-4  # relative improvement that counts, torch's default


class LRSchedule:
    """Drive an optimiser's LRs: call ``step()`` after every ``optimizer.step()``, ``epoch_end()`` per epoch.

    The constructor sets the LRs for the first step. Each group's base LR is ``group["initial_lr"]``
    (set from ``group["lr"]`` if absent, as torch's schedulers do).

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    >>> sched = LRSchedule(opt, ScheduleConfig(name="step", step_size=1), epochs=3, steps_per_epoch=2)
    >>> for _ in range(2): sched.step()
    >>> round(opt.param_groups[0]["lr"], 6)
    0.01
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, epochs: int,
                 steps_per_epoch: int) -> None:
        if epochs < 1 or steps_per_epoch < 1:
            raise ConfigError(f"schedule needs epochs >= 1 and steps_per_epoch >= 1; got {epochs}, {steps_per_epoch}")
        if cfg.warmup_epochs > epochs:
            raise ConfigError(f"schedule warmup_epochs must be <= epochs ({epochs}); got {cfg.warmup_epochs}")
        self.optimizer, self.cfg = optimizer, cfg
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        self.step_count = 0
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    # -- the factor ---------------------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        """Factor at optimiser step ``step`` (0-based); pure given the current plateau reductions."""
        cfg, t = self.cfg, step / self.steps_per_epoch
        lo = cfg.min_lr_ratio
        if cfg.name == "constant":
            f = 1.0
        elif cfg.name == "step":
            f = max(lo, cfg.gamma ** (step // (cfg.step_size * self.steps_per_epoch)))
        elif cfg.name == "exponential":
            f = max(lo, cfg.gamma ** t)
        elif cfg.name == "inverse_time":
            f = max(lo, 1.0 / (1.0 + cfg.decay * t))
        elif cfg.name == "cosine":
            f = _cosine(min(t / self.epochs, 1.0), lo)
        elif cfg.name == "sgdr":
            start, length = _sgdr_cycle(t, cfg.t0, cfg.t_mult)
            f = _cosine((t - start) / length, lo)
        else:  # plateau
            f = max(lo, self.plateau_scale)
        if step < self.warmup_steps:
            f *= (step + 1) / self.warmup_steps
        return f

    def cycle_ends(self) -> list[int]:
        """Epoch counts at which an SGDR cycle ends (snapshot-ensemble points); [] for other schedules."""
        return cycle_ends(self.cfg, self.epochs)

    # -- driving the optimiser ----------------------------------------------------------------------------
    def step(self) -> None:
        """Advance one optimiser step and set the LRs for the next one."""
        self.step_count += 1
        self._apply()

    def epoch_end(self, val_loss: float | None = None) -> None:
        """Report the epoch's validation loss; only ``plateau`` uses it (None is ignored, NaN is no gain)."""
        if self.cfg.name != "plateau" or val_loss is None:
            return
        loss = float(val_loss)
        # Relative improvement, as torch's default; the first finite loss is always an improvement.
        if loss < self.best and (math.isinf(self.best) or loss < self.best - abs(self.best) * _PLATEAU_THRESHOLD):
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_epochs = 0
        self._apply()

    def _apply(self) -> None:
        f = self.lr_factor(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f

    @property
    def factor(self) -> float:
        return self.lr_factor(self.step_count)

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.cfg.name, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
                "step_count": self.step_count, "plateau_scale": self.plateau_scale, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress; the schedule must have been built with the same name, epochs and steps."""
        mine = (self.cfg.name, self.epochs, self.steps_per_epoch)
        theirs = (state["name"], state["epochs"], state["steps_per_epoch"])
        if mine != theirs:
            raise ConfigError(f"cannot resume schedule (name, epochs, steps_per_epoch)={theirs} as {mine}; "
                              "resume with the same schedule, epochs and dataset/batch size")
        self.step_count = int(state["step_count"])
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self._apply()


def cycle_ends(cfg: ScheduleConfig, epochs: int) -> list[int]:
    """Epoch counts at which an SGDR cycle ends (snapshot-ensemble points); [] for other schedules.

    ``e`` in the list means "after ``e`` completed epochs", i.e. at the end of 0-based epoch ``e-1``.

    >>> cycle_ends(ScheduleConfig(name="sgdr", t0=2, t_mult=2), 7)
    [2, 6]
    """
    if cfg.name != "sgdr":
        return []
    ends, end, length = [], 0, cfg.t0
    while end + length <= epochs:
        end += length
        ends.append(end)
        length *= cfg.t_mult
    return ends


def lr_sequence(cfg: ScheduleConfig, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """The LR factor of every optimiser step of a run (no plateau reductions), for tests and plots.

    >>> lr_sequence(ScheduleConfig(name="cosine", warmup_epochs=0), 2, 2).round(3).tolist()
    [1.0, 0.854, 0.5, 0.146]
    """
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = LRSchedule(dummy, cfg, epochs=epochs, steps_per_epoch=steps_per_epoch)
    return np.asarray([sched.lr_factor(s) for s in range(sched.total_steps)], dtype=np.float64)


def _cosine(progress: float, lo: float) -> float:
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _sgdr_cycle(t: float, t0: int, t_mult: int) -> tuple[float, float]:
    """(start, length) in epochs of the SGDR cycle containing time ``t``."""
    start, length = 0.0, float(t0)
    # A small tolerance keeps float rounding of step/steps_per_epoch from missing a restart.
    while t >= start + length - 1e-9:
        start += length
        length *= t_mult
    return start, length
