"""What a backbone needs from the pixels: its preprocessing, carried by the model itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PreprocessSpec:
    """Preprocessing of one backbone, on 0-255 RGB pixels.

    Eval transform: resize the short side to ``round(input_size / crop_pct)`` with ``interpolation``,
    centre-crop ``input_size``, then ``(pixel - mean) / std`` per channel.

    >>> PreprocessSpec(224).resize_size
    256
    """

    input_size: int
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    interpolation: str = "bicubic"

    @property
    def resize_size(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        return cls(
            input_size=int(d["input_size"]),
            crop_pct=float(d["crop_pct"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d["interpolation"]),
        )
