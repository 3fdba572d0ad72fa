"""`headstart demo`: the main job on a real dataset that ships inside an installed package, offline.

scikit-learn's handwritten digits (1797 real 8×8 scans, 10 classes) are written out as an image folder,
then ``fit`` runs on it exactly as on a user's folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits_folder(root: Path) -> Path:
    """Materialise sklearn's digits as ``root/<digit>/<n>.png`` (idempotent)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    marker = root / ".complete"
    if marker.exists():
        return root
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        # 0-16 ink → 0-255, black ink on white paper like a scan; 4× nearest keeps the pixels honest.
        pixels = (255 - img * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((32, 32), Image.NEAREST).save(d / f"{i:04d}.png")
    marker.touch()
    return root
