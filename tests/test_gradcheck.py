"""gradcheck: inputs and parameters against finite differences, and catching a wrong backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headstart.train.gradcheck import gradcheck


class _WrongSquare(torch.autograd.Function):
    """x**2 with a deliberately wrong backward (drops the factor 2)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * x


class _WrongScale(nn.Module):
    """A head whose parameter goes through the broken Function: only the parameter check can see it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, -1.5, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _WrongSquare.apply(self.scale)


def test_linear_tanh_passes_inputs_and_parameters() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    res = gradcheck(layer, torch.randn(5, 4))
    assert res.ok, str(res)
    assert {c.name for c in res.checks} == {"input[0]", "param:0.weight", "param:0.bias"}
    res.assert_ok()
    assert layer[0].weight.dtype == torch.float32  # the caller's module is untouched


def test_wrong_backward_on_input_fails() -> None:
    res = gradcheck(lambda x: _WrongSquare.apply(x).sum(dim=1), torch.randn(3, 2) + 2)
    assert not res.ok
    with pytest.raises(AssertionError, match=r"input\[0\]"):
        res.assert_ok()


def test_wrong_backward_on_parameter_fails() -> None:
    res = gradcheck(_WrongScale(), torch.randn(4, 3))
    by_name = {c.name: c for c in res.checks}
    assert by_name["input[0]"].ok and not by_name["param:scale"].ok
    with pytest.raises(AssertionError, match="param:scale"):
        res.assert_ok()


def test_large_tensor_is_subsampled_and_batchnorm_uses_eval_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    res = gradcheck(net, torch.randn(2, 2, 6, 6), max_elements=10)
    assert res.ok, str(res)
    assert all(c.checked <= 10 for c in res.checks)
