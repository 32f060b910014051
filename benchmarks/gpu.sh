#!/usr/bin/env bash
# One command for a GPU machine: install the GPU extra, run the GPU tests (CuPy retrieval /
# VecMap, GloVe's torch engine on CUDA, DeepSpeed ZeRO-1 on CUDA, each against the
# NumPy / CPU result) and the side-by-side benchmark, and write the report.
#
#   benchmarks/gpu.sh [REPORT=benchmarks/out/gpu-$(hostname).md]
#
# Needs: an NVIDIA GPU with its driver, torch built for that CUDA (install it first, see
# the README's "Running at paper scale on GPUs"). Exits non-zero when no GPU is usable or
# a GPU test fails; the report is still written when the tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT=${1:-benchmarks/out/gpu-$(hostname).md}
PY=${PYTHON:-python}
$PY -m pip install -q -e '.[gpu]'
$PY - <<'PYEOF'
from tokalign_core.runtime.backend import cupy_available, torch_cuda_available
if not (cupy_available() and torch_cuda_available()):
    raise SystemExit("no usable GPU: CuPy sees a CUDA device: %s, torch: %s"
                     % (cupy_available(), torch_cuda_available()))
PYEOF
mkdir -p "$(dirname "$REPORT")"
status=0
$PY -m pytest -m gpu -q -p no:cacheprovider tests/core/test_gpu.py \
  --junitxml="${REPORT%.md}.tests.xml" || status=$?
$PY benchmarks/gpu_bench.py --backends numpy cupy --out "$REPORT"
{
  echo
  echo "GPU tests (pytest -m gpu tests/core/test_gpu.py): exit status $status"
} >> "$REPORT"
echo "report -> $REPORT"
exit $status
