#!/usr/bin/env bash
# The GPU acceptance run (issue: GPU-batched extraction), for the lent GPU machine:
#   device run: bash benchmarks/gpu.sh     (carry .venv is NOT needed: torch is preinstalled there)
# 1. installs the package without touching the machine's torch, 2. golden parity on CUDA
# (fp32, TF32 off), 3. the throughput table (benchmarks/gpu.py). Budget: under 6 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
$PY -m pip install --quiet --no-deps -e . 2>/dev/null || $PY -m pip install --quiet --no-deps .
$PY -m pip install --quiet click rich h5py pillow pytest 2>/dev/null || true
D2CLI_TEST_DEVICE=cuda timeout 120 $PY -m pytest -q tests/test_parity.py
timeout 300 $PY benchmarks/gpu.py --seconds 3 | tee "${OUT:-.}/gpu-benchmark.md"
