"""The run directory: resolved config, splits, metrics, curves, checkpoints, bundle — written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from headstart.config import FitConfig, save_toml


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def bundle(self) -> Path:
        return self.path / "bundle"

    def write_json(self, name: str, data: Any) -> Path:
        dest = self.path / name
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    def write_config(self, cfg: FitConfig) -> Path:
        dest = self.path / "config.toml"
        save_toml(cfg, dest)
        return dest

    def write_text(self, name: str, text: str) -> Path:
        dest = self.path / name
        dest.write_text(text, encoding="utf-8")
        return dest
