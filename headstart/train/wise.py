"""WiSE-FT: weight-space ensembling of the fine-tuned model with the one it started from.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): fine-tuning end to end raises
accuracy on the training distribution but can lower it under distribution shift, because the features
drift towards cues of the training data. Averaging the *weights* of the starting model (pretrained
backbone + linear-probe head, LP-FT's start) and of the fine-tuned one,

    θ(α) = (1 − α)·θ_start + α·θ_finetuned,

keeps most of the fine-tuned gains and much of the starting model's robustness, at no inference cost.
Both ends share one pretrained start, so they sit in one basin and the average is a good network, not
the average of two unrelated ones. α = 1 is the fine-tuned model; α = 0.5 is the paper's default.
Frozen stages (and BatchNorm statistics when fixed) are equal at both ends and stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["interpolate"]


@torch.no_grad()
def interpolate(model: nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """Set ``model``'s weights to ``(1 - alpha) * start + alpha * model`` in place.

    Floating-point tensors are mixed; integer buffers (BatchNorm's ``num_batches_tracked``) keep the
    fine-tuned value. ``start`` (e.g. ``clone_state(model)`` taken before training) must have the same keys
    and shapes (the same architecture and head)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    state = model.state_dict()
    if state.keys() != start.keys():
        missing, extra = sorted(state.keys() - start.keys()), sorted(start.keys() - state.keys())
        raise ValueError(f"the start state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, tuned in state.items():
        ref = start[name]
        if ref.shape != tuned.shape:
            raise ValueError(f"{name}: start shape {tuple(ref.shape)} vs model {tuple(tuned.shape)}")
        if tuned.is_floating_point():
            tuned.lerp_(ref.to(tuned.device, tuned.dtype), 1.0 - alpha)
