#!/usr/bin/env bash
# CPU comparisons (no GPU needed), called by benches/run.sh: at 32x32 our
# G step vs the same architecture and step in PyTorch, same thread count,
# one run; then cpu128.sh, the real sizes (BigGAN 128 update, S2L ResNet-50
# step) twice each. Needs `make setup` (the Python); builds the binary.
# Environment: THREADS (2), CH (32), BATCH (64), STEPS (5), WARMUP (2).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/benches/env.sh"
[ -n "${FEWLABELS:-}" ] || bench_build
export FEWLABELS=${FEWLABELS:-$FL_BIN}
export PYTHON=${FEWLABELS_PYTHON:-python3}
DEVICE=cpu RES=32 CH=${CH:-32} BATCH=${BATCH:-64} STEPS=${STEPS:-5} WARMUP=${WARMUP:-2} \
  THREADS=${THREADS:-2} PRECISIONS=fp32 nice -n 10 bash "$top/benches/gan/gpu.sh"
"$top/benches/gan/cpu128.sh"
