#!/usr/bin/env bash
# The issue-5 CPU run on Fashion-MNIST 32x32 with 10% labels (2 threads):
#  1. S2L (rotation on all images + w x CE on the labelled ones) -> embed ->
#     classifier pseudo-labels: accuracy on the images whose labels were hidden;
#  2. the supervised-only baseline on the labelled images at the same budget;
#  3. rotation-only pretraining -> embed -> k-means NMI, against raw pixels
#     (scikit-learn, benches/pretrain/nmi.py).
#   benches/pretrain/fmnist_s2l.sh [S2L_STEPS] [SUP_STEPS] [ROT_STEPS]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
s2l_steps=${1:-1200}
sup_steps=${2:-2400}
rot_steps=${3:-1200}
out=${BENCH_OUT:-$top/runs/bench-pretrain}
mkdir -p "$out"
bench_build --example fmnist_stages
fl=$FL_BIN
[ -f "$out/fmnist/images/_stage.json" ] || "$FL_EXAMPLES/fmnist_stages" "$FEWLABELS_FASHION_MNIST" "$out/fmnist" 60000 32 0.1
img=$out/fmnist/images lab=$out/fmnist/labels
common=(--threads 2 --device cpu --arch small --eval-every 400)
run() { echo "+ $*" >&2; /usr/bin/time -f "%e s wall" "$@"; }
run $fl --json pretrain --images "$img" --labels "$lab" --output "$out/s2l" --steps "$s2l_steps" \
  --batch-size 32 --labelled-batch-size 64 --class-weight 1 "${common[@]}" | tee "$out/s2l.json"
run $fl --json embed --images "$img" --model "$out/s2l" --output "$out/s2l-features" --threads 2 --device cpu
run $fl --json pseudo-label --method classifier --features "$out/s2l-features" --labels "$lab" --images "$img" \
  --output "$out/s2l-pseudo" | tee "$out/s2l-pseudo.json"
run $fl --json pretrain --images "$img" --labels "$lab" --output "$out/sup" --steps "$sup_steps" \
  --objective supervised --labelled-batch-size 64 "${common[@]}" | tee "$out/sup.json"
run $fl --json embed --images "$img" --model "$out/sup" --output "$out/sup-features" --threads 2 --device cpu
run $fl --json pseudo-label --method classifier --features "$out/sup-features" --labels "$lab" --images "$img" \
  --output "$out/sup-pseudo" | tee "$out/sup-pseudo.json"
run $fl --json pretrain --images "$img" --output "$out/rot" --steps "$rot_steps" --batch-size 64 "${common[@]}" | tee "$out/rot.json"
run $fl --json embed --images "$img" --model "$out/rot" --output "$out/rot-features" --threads 2 --device cpu
"$FEWLABELS_PYTHON" benches/pretrain/nmi.py "$img" "$out/rot-features" | tee "$out/nmi-rot.json"
"$FEWLABELS_PYTHON" benches/pretrain/nmi.py "$img" pixels | tee "$out/nmi-pixels.json"
