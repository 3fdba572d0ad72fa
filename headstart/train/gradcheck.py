"""Check a custom layer's or head's backward pass against finite differences, inputs and parameters.

Everything runs in float64 on a deep copy of the module in eval mode (dropout off, BatchNorm on its
running statistics), so the check is deterministic and the caller's module is untouched. Outputs
are reduced to a scalar with fixed random weights ``L = Σ w·out``: one backward pass gives the
vector-Jacobian product, and a wrong backward is caught unless it happens to be orthogonal to ``w``
(probability zero). Central differences of ``L`` cost two forward passes per checked element.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["GradcheckResult", "TensorCheck", "gradcheck"]


@dataclass
class TensorCheck:
    """Agreement of autograd with finite differences for one input or parameter."""

    name: str
    max_abs_err: float
    max_rel_err: float
    checked: int  # elements compared (may be a random subset of a large tensor)
    ok: bool


@dataclass
class GradcheckResult:
    """Per-tensor results; ``ok`` when every tensor agrees within ``atol + rtol·|numerical|``."""

    checks: list[TensorCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def worst(self) -> TensorCheck | None:
        """The failing tensor with the largest relative error (or the worst overall if all pass)."""
        pool = [c for c in self.checks if not c.ok] or self.checks
        return max(pool, key=lambda c: (c.max_rel_err, c.max_abs_err), default=None)

    def assert_ok(self) -> None:
        if not self.ok:
            w = self.worst
            assert w is not None
            bad = ", ".join(c.name for c in self.checks if not c.ok)
            raise AssertionError(
                f"gradient check failed for {bad}; worst is {w.name}: max abs error {w.max_abs_err:.3g}, "
                f"max rel error {w.max_rel_err:.3g}"
            )

    def __str__(self) -> str:
        rows = [f"{c.name}: abs {c.max_abs_err:.2e} rel {c.max_rel_err:.2e} "
                f"({c.checked} checked) {'ok' if c.ok else 'FAIL'}" for c in self.checks]
        return "\n".join(rows) or "nothing to check"


def gradcheck(
    module_or_fn: nn.Module | Callable[..., Any],
    *inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    max_elements: int = 2000,
    seed: int = 0,
) -> GradcheckResult:
    """Compare autograd with float64 central differences for floating inputs and module parameters.

    Non-tensor and integer inputs are passed through unchecked. At most ``max_elements`` random
    elements of each tensor are perturbed, to keep large layers affordable. Never raises on a
    mismatch: inspect ``.ok`` or call ``.assert_ok()``.

    >>> gradcheck(nn.Sequential(nn.Linear(3, 2), nn.Tanh()), torch.randn(4, 3)).ok
    True
    """
    gen = torch.Generator().manual_seed(seed)
    fn: Callable[..., Any] = module_or_fn
    named_params: list[tuple[str, torch.Tensor]] = []
    if isinstance(module_or_fn, nn.Module):
        module = copy.deepcopy(module_or_fn).to(torch.float64).eval()
        named_params = [(f"param:{n}", p) for n, p in module.named_parameters()]
        fn = module
    args = [_to64(x) for x in inputs]
    named_inputs = [(f"input[{i}]", x) for i, x in enumerate(args)
                    if isinstance(x, torch.Tensor) and x.is_floating_point()]
    targets = named_inputs + named_params
    for _, t in targets:
        if not t.is_contiguous():  # perturbation goes through a flat view, which needs contiguity
            t.data = t.data.contiguous()
        t.requires_grad_(True)

    with torch.enable_grad():
        outs = _flatten(fn(*args))
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outs]

    def loss() -> torch.Tensor:
        return sum((o.to(torch.float64) * w).sum() for o, w in zip(_flatten(fn(*args)), weights))  # type: ignore[return-value]

    with torch.enable_grad():
        value = loss()
        diff = [t for _, t in targets]
        grads = torch.autograd.grad(value, diff, allow_unused=True) if diff else ()

    result = GradcheckResult()
    with torch.no_grad():
        for (name, t), g in zip(targets, grads):
            analytic = torch.zeros_like(t) if g is None else g.detach()
            flat = t.data.view(-1)  # views share storage, so perturbing `flat` perturbs the tensor in use
            idx = torch.arange(flat.numel())
            if flat.numel() > max_elements:
                idx = torch.randperm(flat.numel(), generator=gen)[:max_elements]
            numeric = torch.empty(len(idx), dtype=torch.float64)
            for k, i in enumerate(idx.tolist()):
                orig = flat[i].item()
                flat[i] = orig + eps
                plus = float(loss())
                flat[i] = orig - eps
                minus = float(loss())
                flat[i] = orig
                numeric[k] = (plus - minus) / (2 * eps)
            a = analytic.reshape(-1)[idx]
            err = (a - numeric).abs()
            rel = err / numeric.abs().clamp_min(atol)  # atol floor: near-zero gradients have no scale
            ok = bool((err <= atol + rtol * numeric.abs()).all())
            empty = len(idx) == 0
            result.checks.append(TensorCheck(name, 0.0 if empty else float(err.max()),
                                             0.0 if empty else float(rel.max()), len(idx), ok))
    return result


def _to64(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().to(torch.float64).clone()
    return x


def _flatten(out: Any) -> list[torch.Tensor]:
    """Floating tensors of an output that may be a tensor, tuple/list or dict of them."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []
