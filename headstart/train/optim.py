"""Parameter groups and optimisers for fine-tuning a ``Backbone``.

Pretrained stages train at ``lr × backbone_lr_mult`` (optionally decayed further by depth), the new
classifier at ``lr``. Frozen stages (the first ``freeze`` of ``model.stages``) are left out of the
optimiser entirely. 1-D parameters (biases, BatchNorm scales and shifts) get no weight decay: decaying
them only shifts activations and fights the normalisation, it does not regularise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from headstart.errors import ConfigError
from headstart.models.base import Backbone
from headstart.train.options import OPTIMIZERS, OptimConfig

__all__ = ["OPTIMIZERS", "OptimConfig", "build_optimizer", "build_param_groups", "l1_penalty"]

def build_param_groups(model: Backbone, cfg: OptimConfig, *, freeze: int = 0) -> list[dict[str, Any]]:
    """One group per trainable stage × {decay, no_decay}, then the classifier's; empty groups dropped.

    Each group has ``params``, ``lr``, ``weight_decay``, ``name`` (``"stage3/decay"``), ``lr_scale``
    (``lr / cfg.lr``, so a schedule can rescale) and ``decay`` (whether L2/L1 apply).
    Stages are frozen by position only; ``requires_grad`` is not consulted (the trainer sets it).

    >>> from headstart.models import create_model
    >>> groups = build_param_groups(create_model("tiny_test"), OptimConfig(lr=0.1), freeze=1)
    >>> [(g["name"], g["lr"]) for g in groups][:2]
    [('stage1/decay', 0.010000000000000002), ('stage1/no_decay', 0.010000000000000002)]
    """
    stage_names = list(model.stages.keys())
    n_stages = len(stage_names)
    if isinstance(freeze, bool) or not isinstance(freeze, int) or not 0 <= freeze <= n_stages:
        raise ConfigError(
            f"freeze must be an integer from 0 to {n_stages} (number of leading stages of {model.name} "
            f"to freeze: {', '.join(stage_names)}); got {freeze!r}"
        )
    by_name = dict(model.param_groups())
    trainable = stage_names[freeze:]
    scaled: list[tuple[str, float]] = [
        # i is 0-based here, so the exponent n-1-i is the brief's n-i for 1-based i: last stage gets 1.
        (name, cfg.backbone_lr_mult * cfg.layer_decay ** (len(trainable) - 1 - i))
        for i, name in enumerate(trainable)
    ]
    scaled.append(("classifier", 1.0))
    seen: set[int] = set()  # a tied parameter in two stages would make torch refuse the groups
    groups: list[dict[str, Any]] = []
    for name, scale in scaled:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in by_name[name]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
        for suffix, params, wd in (("decay", decay, cfg.weight_decay), ("no_decay", no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": cfg.lr * scale, "weight_decay": wd,
                               "name": f"{name}/{suffix}", "lr_scale": scale, "decay": suffix == "decay"})
    return groups


def build_optimizer(groups: Sequence[Mapping[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` over ``groups`` (each group's own ``lr``/``weight_decay`` win).

    ``adam`` adds weight decay to the gradient (L2, rescaled by Adam's per-parameter step sizes);
    ``adamw`` decays weights directly (Loshchilov & Hutter), which is what usually works better.
    ``rmsprop`` uses torch's smoothing ``alpha=0.99`` and no momentum.

    >>> opt = build_optimizer([{"params": [nn.Parameter(torch.zeros(2))]}], OptimConfig(name="adam"))
    >>> type(opt).__name__
    'Adam'
    """
    groups = [dict(g) for g in groups]  # torch mutates the dicts it is given
    name, lr, wd = cfg.name, cfg.lr, cfg.weight_decay
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.0, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=wd, nesterov=name == "nesterov")
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, weight_decay=wd, eps=cfg.eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.99, eps=cfg.eps, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, weight_decay=wd)
    raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def l1_penalty(
    model_or_params: nn.Module | Iterable[torch.Tensor] | Sequence[Mapping[str, Any]] | None,
    groups: Sequence[Mapping[str, Any]] | None = None,
) -> torch.Tensor:
    """``Σ|w|`` over the parameters of the decay groups (weights, not biases or BN).

    ``l1_penalty(model, groups)`` restricts the sum to ``model``'s parameters; ``l1_penalty(groups)``
    uses all decay groups (``build_param_groups``'s or an optimiser's ``param_groups``);
    ``l1_penalty(model)`` alone uses every parameter with 2+ dimensions. Train with
    ``loss = loss + cfg.l1 * l1_penalty(groups)``.

    >>> float(l1_penalty([{"params": [torch.ones(2, 2)], "decay": True}]))
    4.0
    """
    first = model_or_params
    if groups is None and isinstance(first, Sequence) and all(isinstance(g, Mapping) for g in first):
        first, groups = None, first
    if groups is not None:
        params = [p for g in groups if g.get("decay", g.get("weight_decay", 0) > 0) for p in g["params"]]
        if first is not None:
            wanted = {id(p) for p in (first.parameters() if isinstance(first, nn.Module) else first)}
            params = [p for p in params if id(p) in wanted]
    else:
        if first is None:
            raise TypeError("l1_penalty needs a model, parameters or param groups")
        params = [p for p in (first.parameters() if isinstance(first, nn.Module) else first) if p.ndim > 1]
    if not params:
        return torch.zeros(())
    return torch.stack([p.abs().sum() for p in params]).sum()
