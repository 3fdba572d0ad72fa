"""Freezing the first K stages of a backbone: no gradients, fixed BatchNorm statistics.

A frozen stage is a fixed function of its input: its parameters get no gradient *and* it runs in eval mode
(BatchNorm uses its running statistics and never updates them; drop-path is off). That is what makes its
outputs cacheable (``headstart.train.prefix``) and what keeps small fine-tuning batches from wrecking
pretrained BN statistics (the Keras transfer-learning guide's advice).

>>> from headstart.models import create_model
>>> m = create_model("tiny_test", num_classes=3)
>>> freeze_stages(m, 2)
FreezeState(k=2, freeze_bn=False)
>>> [p.requires_grad for p in m.stages["stem"].parameters()]
[False, False, False]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from headstart.errors import ConfigError
from headstart.models.base import Backbone

__all__ = ["FreezeState", "freeze_stages", "resolve_freeze", "set_train_mode"]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class FreezeState:
    """How a model is frozen: the first ``k`` stages, and whether every BatchNorm keeps its statistics."""

    k: int
    freeze_bn: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_freeze(model: Backbone, k: int) -> int:
    """Validate ``k`` (0..number of stages); a negative ``k`` counts from the end (-1: all but the last)."""
    n = len(model.stages)
    kk = n + k if k < 0 else k
    if not 0 <= kk <= n:
        raise ConfigError(
            f"freeze={k} is out of range for {model.name}, which has {n} stages "
            f"({', '.join(model.stages.keys())}); use 0..{n} (0 trains everything, {n} only the classifier)"
        )
    return kk


def freeze_stages(model: Backbone, k: int, *, freeze_bn: bool = False) -> FreezeState:
    """Stop gradients to the first ``k`` stages; every later stage and the classifier train.

    Calling it again with another ``k`` re-enables the stages it no longer covers, so a schedule that
    unfreezes progressively just calls it with a smaller ``k``. ``freeze_bn`` is about BN *statistics*
    (applied by ``set_train_mode``); the BN affine parameters of trainable stages still train.
    """
    k = resolve_freeze(model, k)
    for i, stage in enumerate(model.stages.values()):
        stage.requires_grad_(i >= k)
    model.classifier.requires_grad_(True)
    for stage in list(model.stages.values())[:k]:
        for p in stage.parameters():
            p.grad = None  # a stale gradient on a frozen tensor would be applied by a later optimizer
    return FreezeState(k, freeze_bn)


def set_train_mode(model: Backbone, k: int, freeze_bn: bool = False) -> None:
    """Train mode, except the first ``k`` stages (entirely eval) and, with ``freeze_bn``, every BatchNorm.

    ``model.train()`` would switch the frozen BN layers back to batch statistics and update their running
    means, so call this (not ``model.train()``) at the start of every epoch.
    """
    k = resolve_freeze(model, k)
    model.train()
    for stage in list(model.stages.values())[:k]:
        stage.eval()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, _BN_TYPES):
                m.eval()

