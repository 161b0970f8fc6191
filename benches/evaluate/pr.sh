#!/usr/bin/env bash
# The cost of evaluate's precision and recall (issue 19): k-NN manifolds of
# 10,000 x 10,000 Inception features (Fashion-MNIST's 10,000 test images,
# scored against themselves: the same work as any 10,000 samples against a
# 10,000-image reference), ours inside `fewlabels evaluate` against
# StyleGAN2-ADA's way in PyTorch on the same cached features; each twice,
# 2 threads. The first run computes the Inception statistics of the table
# (~15 min on 2 cores) unless they are cached; they are not part of the timing.
#   benches/evaluate/pr.sh
# Env: THREADS (2), BENCH_OUT (runs/bench-pr).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
out=${BENCH_OUT:-$top/runs/bench-pr}
threads=${THREADS:-2}
mkdir -p "$out"
bench_build
"$FL_BIN" --quiet prepare --input "$FEWLABELS_FASHION_MNIST/t10k-images-idx3-ubyte.gz" --size 32 \
  --class-names "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot" --output "$out/test"
for run in 1 2; do
  rm -rf "$out/eval"
  "$FL_BIN" evaluate --samples "$out/test" --reference "$out/test" --output "$out/eval" \
    --device cpu --threads "$threads" 2> "$out/evaluate.err"
  stats=$(sed -n 's/^evaluate: [a-z]* statistics from the cache //p' "$out/evaluate.err" | head -1)
  jq -c --arg run "$run" '{contender: "fewlabels", run: ($run | tonumber), precision: .sources[0].precision_mean,
    recall: .sources[0].recall_mean, seconds: .sources[0].runs[0].precision_recall_seconds}' "$out/eval/scores.json"
  [ -n "$stats" ] || { echo "pr.sh: no cached statistics found in $out/evaluate.err" >&2; exit 1; }
  OMP_NUM_THREADS=$threads "$FEWLABELS_PYTHON" benches/evaluate/pr_peer.py "$stats" 3 "$threads" \
    | jq -c --arg run "$run" '{contender: "StyleGAN2-ADA way (PyTorch cdist)", run: ($run | tonumber), precision, recall, seconds}'
done
