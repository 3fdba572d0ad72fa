"""benchmarks/gpu_check.sh, the prepared GPU check, in its dry-run mode: the same four steps on the CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu-dry.json"
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["bench", "finetune", "agreement", "nccl"] and all(s["ok"] for s in steps.values())
    assert steps["bench"]["rows"][0]["device"] == "cpu"
    agree = steps["agreement"]
    assert agree["bf16"]["cosine_min"] >= 0.99 and agree["bf16"]["max_abs_diff"] > 0  # another precision
    assert agree["fp32"]["max_abs_diff"] == 0  # the same engine on the same device
    assert steps["nccl"]["processes"] == 1 and steps["nccl"]["backend"] == "gloo"  # a real process group
    assert steps["finetune"]["device"] == "cpu" and 0 <= steps["finetune"]["test_accuracy"] <= 1
