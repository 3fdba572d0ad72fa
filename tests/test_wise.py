from __future__ import annotations

import pytest
import torch
from torch import nn

from headstart.train.checkpoint import clone_state as snapshot
from headstart.train.wise import interpolate


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def test_interpolate_is_the_weighted_mean_and_keeps_integer_buffers() -> None:
    a, b = _net(0), _net(1)
    a(torch.zeros(1, 3, 5, 5)), b(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer, count a BN batch
    start = snapshot(a)
    b.get_submodule("1").num_batches_tracked.fill_(7)
    tuned = snapshot(b)
    interpolate(b, start, 0.25)
    for k, v in b.state_dict().items():
        want = 0.75 * start[k] + 0.25 * tuned[k] if v.is_floating_point() else tuned[k]
        torch.testing.assert_close(v, want, msg=k)
    interpolate(b, start, 0.0)
    torch.testing.assert_close(b.state_dict()["0.weight"], start["0.weight"])


def test_interpolate_rejects_a_foreign_start() -> None:
    a = _net(0)
    a(torch.zeros(1, 3, 5, 5))
    other = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="does not match"):
        interpolate(a, snapshot(other), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, snapshot(a), 1.5)
