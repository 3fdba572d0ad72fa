#!/usr/bin/env bash
# The prepared GPU check, at most ~8 minutes: run it once whenever a GPU machine is lent. It needs headstart
# installed (make .venv/.installed, or pip install -e '.[zoo]' with a CUDA build of torch 2.13) and a copy of
# a shared dataset. Output: benchmarks/results/gpu-<date>.json (the table for BENCHMARKS.md is in it).
#
#   benchmarks/gpu_check.sh --data shared/intel_scenes_small        # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run --out /tmp/gpu-dry.json         # anywhere: the same steps on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi here"
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
