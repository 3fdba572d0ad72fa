"""EfficientNet-Lite in plain PyTorch, numerically matching the TensorFlow originals.

Lite differs from EfficientNet: ReLU6 instead of swish, no squeeze-excitation, stem (32) and head (1280)
widths fixed, first and last stage repeats not scaled. TF "SAME" padding is asymmetric for stride-2
convolutions (more on the bottom/right), so those pad explicitly; BatchNorm eps is 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headstart.models.base import Backbone
from headstart.models.spec import PreprocessSpec

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay


@dataclass(frozen=True)
class StageArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# EfficientNet-B0 stages; Lite variants scale widths/depths from these.
B0_STAGES = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)
STEM_CH = 32
HEAD_CH = 1280


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet channel rounding."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow "SAME" padding for any input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # Stride 1 with an odd kernel pads symmetrically: let cuDNN/oneDNN do it, no extra op.
        super().__init__(cin, cout, kernel, stride, padding=0 if stride > 1 else kernel // 2,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_pad(x.shape[-2], k, s)
            left, right = _same_pad(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBNAct(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = Conv2dSame(cin, cout, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBNAct(mid, cout, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        if self.residual:
            y = drop_path(y, self.drop_path_rate, self.training) + x
        return y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite backbone. Taps: ``stem``, ``stage1``…``stage7``, ``head``, ``pooled``."""

    def __init__(self, width: float, depth: float, spec: PreprocessSpec, *, num_classes: int = 1000,
                 drop_rate: float = 0.2, drop_path_rate: float = 0.0, name: str = "efficientnet_lite") -> None:
        super().__init__(drop_rate)
        self.name, self.spec = name, spec
        stages: dict[str, nn.Module] = {"stem": ConvBNAct(3, STEM_CH, 3, 2)}
        plan = list(_scaled_stages(width, depth))
        total = sum(a.repeats for a in plan)
        idx = 0
        for s, args in enumerate(plan, start=1):
            blocks = []
            for j in range(args.repeats):
                cin = args.in_ch if j == 0 else args.out_ch
                stride = args.stride if j == 0 else 1
                blocks.append(MBConv(cin, args.out_ch, args.kernel, stride, args.expand,
                                     drop_path_rate * idx / total))
                idx += 1
            stages[f"stage{s}"] = nn.Sequential(*blocks)
        stages["head"] = ConvBNAct(plan[-1].out_ch, HEAD_CH)
        self.stages = nn.ModuleDict(stages)
        self.classifier = nn.Linear(HEAD_CH, num_classes)

    def load_tf_port_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in the EfficientNet-PyTorch layout (``_blocks.N._depthwise_conv``...), strictly."""
        ours = self.state_dict()
        mapping = tf_port_key_map(self)
        missing = sorted(set(mapping.values()) - set(state))
        unexpected = sorted(set(state) - set(mapping.values()))
        if missing or unexpected:
            raise KeyError(f"weights do not fit {self.name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        converted = {}
        for key, src in mapping.items():
            if state[src].shape != ours[key].shape:
                raise KeyError(f"{src}: shape {tuple(state[src].shape)} != {key} {tuple(ours[key].shape)}")
            converted[key] = state[src]
        self.load_state_dict(converted, strict=True)


def _scaled_stages(width: float, depth: float):
    last = len(B0_STAGES) - 1
    for i, a in enumerate(B0_STAGES):
        repeats = a.repeats if i in (0, last) else int(math.ceil(depth * a.repeats))
        cin = STEM_CH if i == 0 else round_filters(a.in_ch, width)
        yield StageArgs(repeats, a.kernel, a.stride, a.expand, cin, round_filters(a.out_ch, width))


_BN_NAMES = {"expand": "_bn0", "dw": "_bn1", "project": "_bn2"}
_CONV_NAMES = {"expand": "_expand_conv", "dw": "_depthwise_conv", "project": "_project_conv"}


def tf_port_key_map(model: EfficientNetLite) -> dict[str, str]:
    """Our state-dict key → the EfficientNet-PyTorch key, for every tensor."""
    mapping: dict[str, str] = {}
    block = -1
    last_prefix = None
    for key in model.state_dict():
        parts = key.split(".")
        if parts[0] == "classifier":
            mapping[key] = "_fc." + parts[1]
        elif parts[1] == "stem":
            mapping[key] = ("_conv_stem." if parts[2] == "conv" else "_bn0.") + parts[-1]
        elif parts[1] == "head":
            mapping[key] = ("_conv_head." if parts[2] == "conv" else "_bn1.") + parts[-1]
        else:  # stages.stageS.J.{expand,dw,project}.{conv,bn}.param
            prefix = ".".join(parts[1:3])
            if prefix != last_prefix:
                block, last_prefix = block + 1, prefix
            part, layer = parts[3], parts[4]
            name = _CONV_NAMES[part] if layer == "conv" else _BN_NAMES[part]
            mapping[key] = f"_blocks.{block}.{name}.{parts[-1]}"
    return mapping
