#!/usr/bin/env bash
# The GPU acceptance run (issue: GPU-batched extraction), for the lent GPU machine, which has
# torch but no network. Prepare here, then run there:
#   make gpu-wheels                         # small wheels (h5py, click, rich, ...) into wheels/
#   device run: bash benchmarks/gpu.sh      with carry: ["wheels"]
# 1. installs the package and the small deps without touching the machine's torch,
# 2. golden parity on CUDA (fp32, TF32 off), 3. the throughput and precision tables.
# Budget: under 8 minutes (GPU_BENCH_ARGS="--seconds 1 --batches 1,8" for about half). Tables are written to $OUT (or .).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-.}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
if [ -d wheels ]; then
  $PY -m pip install --quiet --no-index --find-links wheels click rich h5py pytest pillow || true
fi
$PY -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
  || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# each step runs even when the one before failed: one lease must bring back every table
status=0
D2CLI_TEST_DEVICE=cuda timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_parity.py \
  | tee "$OUTDIR/gpu-parity.txt" || status=1
timeout 60 $PY benchmarks/gpu_detect_check.py | tee "$OUTDIR/gpu-detect.txt" || status=1
timeout 300 $PY benchmarks/gpu.py ${GPU_BENCH_ARGS:---seconds 2} | tee "$OUTDIR/gpu-benchmark.md" || status=1
timeout 60 $PY benchmarks/precision.py --device cuda | tee "$OUTDIR/gpu-precision.md" || status=1
exit $status
