"""The fine-tuning optimiser's and LR schedule's settings: plain dataclasses, no torch, so that reading a
configuration (every command's start-up) does not load PyTorch. ``train.optim`` and ``train.schedules``
build from them."""

from __future__ import annotations

from dataclasses import dataclass

from headstart.errors import ConfigError
from headstart.settings import check_settings, setting

__all__ = ["OPTIMIZERS", "SCHEDULES", "OptimConfig", "ScheduleConfig"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings.

    ``layer_decay`` < 1 multiplies the LR of trainable stage ``i`` of ``n`` (1-based, input→output) by
    ``layer_decay ** (n - i)``: the last stage gets 1, earlier, more generic stages less (BEiT/ELECTRA).
    ``weight_decay`` is L2 (in the gradient for sgd/momentum/nesterov/adagrad/rmsprop/adam; decoupled,
    ``p -= lr·wd·p``, for adamw, where values around 1e-2 are usual). ``l1`` > 0 adds
    ``l1 · Σ|w|`` to the loss (see ``l1_penalty``); both together give an elastic net.

    >>> OptimConfig(name="nesterov", lr=0.01).momentum
    0.9
    """

    name: str = setting("adamw", choices=OPTIMIZERS, flag="--optimizer", help="finetune optimiser")
    lr: float = setting(1e-3, gt=0, flag="--lr", help="finetune: learning rate of the new head; pretrained "
                        "layers get lr x backbone-lr-mult")
    backbone_lr_mult: float = setting(0.1, ge=0, flag="--backbone-lr-mult",
                                      help="finetune: the pretrained layers' share of the head's learning rate")
    layer_decay: float = setting(1.0, gt=0, le=1, flag="--layer-decay", help="finetune: LR x this per stage "
                                 "below the last trainable one (1 = off)")
    weight_decay: float = setting(0.01, ge=0, flag="--weight-decay", help="finetune: weight decay (decoupled "
                                  "for adamw, L2 in the gradient for the others)")
    l1: float = setting(0.0, ge=0, flag="--l1", help="finetune: L1 strength added to the loss (with "
                        "--weight-decay: elastic net)")
    momentum: float = setting(0.9, ge=0, lt=1, help="momentum of sgd/momentum/nesterov/rmsprop")
    betas: tuple[float, float] = setting((0.9, 0.999), help="Adam's betas, two numbers in [0, 1)")
    # float32 rounds a smaller epsilon to 0, and Adam then divides 0 by 0 where a gradient is 0
    eps: float = setting(1e-8, ge=1e-12, help="the optimiser's epsilon")

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.name).lower())
        check_settings(self, "finetune.optim")
        try:
            betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            betas = ()
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"finetune.optim.betas must be two numbers in [0, 1); got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        if self.name == "nesterov" and self.momentum == 0:
            raise ConfigError("finetune.optim.momentum must be > 0 with the nesterov optimizer; got 0")


SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine", "sgdr", "plateau")


@dataclass(frozen=True)
class ScheduleConfig:
    """LR schedule settings; see the module docstring for the formulas.

    >>> ScheduleConfig(name="step", step_size=30).gamma
    0.1
    """

    name: str = setting("cosine", choices=SCHEDULES, flag="--schedule", help="finetune: learning-rate schedule")
    warmup_epochs: float = setting(1.0, ge=0, flag="--warmup", help="finetune: linear warm-up epochs")
    step_size: int = setting(10, ge=1, help="step: epochs between LR drops")
    gamma: float = setting(0.1, gt=0, le=1, help="step: factor of each LR drop")
    decay: float = setting(0.1, ge=0, help="exponential / inverse_time: decay rate per epoch")
    min_lr_ratio: float = setting(0.0, ge=0, le=1, help="cosine/sgdr: final LR as a share of the peak")
    t0: int = setting(10, ge=1, flag="--t0", help="sgdr: epochs of the first cycle (warm restarts)")
    t_mult: int = setting(1, ge=1, help="sgdr: each cycle this many times longer than the last")
    plateau_patience: int = setting(3, ge=0, help="plateau: epochs without improvement before a drop")
    plateau_factor: float = setting(0.1, gt=0, lt=1, help="plateau: factor of each LR drop")

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.name).lower())
        check_settings(self, "finetune.schedule")
