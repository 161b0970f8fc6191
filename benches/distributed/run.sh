#!/usr/bin/env bash
# Data-parallel scaling on this machine's CPU (issue 17), Gloo, 2 ranks:
#  1. train-gan on real Fashion-MNIST (32x32, biggan mode): one process with
#     1 thread, one process with 2 threads (what a user of 2 cores would
#     otherwise run) and 2 ranks under torchrun with 1 thread each, the same
#     global batch; images/s of the training phase (the manifest's
#     `phases.train`), each contender twice, the better kept. Scaling
#     efficiency = (2-rank images/s) / (2 x 1-process-1-thread images/s).
#  2. Averaging BigGAN-128's gradients (158M parameters) over 2 ranks: ours
#     (examples/dist_allreduce.rs) against PyTorch's c10d doing the same
#     buckets (allreduce_torch.py), each twice.
# `run.sh prepare` builds and makes the data; `run.sh measure` only measures
# (run it under bench-alone); no argument does both.
# Environment: STEPS (8), BATCH (32), CH (8), RES (128), ARCH_CH (96), REPS (3).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
. "$top/benches/env.sh"
work=${BENCH_WORK:-$HOME/.cache/fewlabels/bench-distributed}
torchrun=$(dirname "${FEWLABELS_PYTHON}")/torchrun
example=$FL_EXAMPLES/dist_allreduce
STEPS=${STEPS:-8} BATCH=${BATCH:-32} CH=${CH:-8} RES=${RES:-128} ARCH_CH=${ARCH_CH:-96} REPS=${REPS:-3}
what=${1:-all}

if [ "$what" != measure ]; then
  bench_build --example dist_allreduce
  mkdir -p "$work"
  bench_fmnist_images "$work/images"
  "$FL_BIN" --quiet shard --images "$work/images" --output "$work/all"
fi
[ "$what" = prepare ] && exit 0

# Train-phase images/s of one train-gan run: `gan NAME THREADS LAUNCH...`.
gan() {
  local name=$1 threads=$2
  shift 2
  local out="$work/gan-$name"
  rm -rf "$out"
  "$@" "$FL_BIN" --quiet train-gan --data "$work/all" --output "$out" --mode biggan \
    --steps "$STEPS" --batch-size "$BATCH" --resolution 32 --ch "$CH" --device cpu \
    --threads "$threads" --sample-every 1000000 --checkpoint-every 1000000 --log-every 5 \
    --standing-batches 1 --grid-rows 1 --grid-cols 1 2>&1 | grep -v '^W[0-9]\{4\} \|\*\*\*\*\*' || true
  "$FEWLABELS_PYTHON" -c 'import json,sys; m=json.load(open(sys.argv[1])); print(int(sys.argv[2])*int(sys.argv[3])/m["timings"]["phases"]["train"])' \
    "$out/_stage.json" "$STEPS" "$BATCH"
}
best() { printf '%s\n' "$@" | sort -g | tail -1; }
export OMP_NUM_THREADS=1
single1=() single2=() ranks2=()
for round in 1 2; do
  single1+=("$(gan single1 1 env)")
  single2+=("$(gan single2 2 env)")
  ranks2+=("$(gan ranks2 1 "$torchrun" --no-python --standalone --nproc-per-node 2)")
done
s1=$(best "${single1[@]}") s2=$(best "${single2[@]}") r2=$(best "${ranks2[@]}")
echo "train-gan 32x32 ch $CH batch $BATCH, $STEPS steps, images/s of the training phase (runs: ${single1[*]} | ${single2[*]} | ${ranks2[*]}):"
awk -v s1="$s1" -v s2="$s2" -v r2="$r2" 'BEGIN {
  printf "  1 process 1 thread %.1f, 1 process 2 threads %.1f, 2 ranks x 1 thread %.1f\n", s1, s2, r2
  printf "  scaling efficiency %.2f (2 ranks / 2 x 1 thread); 2 ranks / 1 process 2 threads %.2f\n", r2 / (2 * s1), r2 / s2 }'

for round in 1 2; do
  "$torchrun" --no-python --standalone --nproc-per-node 2 "$example" "$RES" "$ARCH_CH" "$REPS" cpu 2>&1 | grep '^{'
  "$torchrun" --standalone --nproc-per-node 2 "$top/benches/distributed/allreduce_torch.py" "$RES" "$ARCH_CH" "$REPS" cpu 2>&1 | grep '^{'
done
