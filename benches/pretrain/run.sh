#!/usr/bin/env bash
# Pretrain speed figures (issue 5): the training step of the small ResNet in
# tch vs PyTorch (same model, step, threads; alternated three times, median),
# and the shard loader alone on Fashion-MNIST 32x32.
#   benches/pretrain/run.sh [THREADS] [STEPS]
# Needs `make setup` (FEWLABELS_PYTHON, FEWLABELS_FASHION_MNIST) and cargo.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
threads=${1:-2}
steps=${2:-30}
batch=32 labelled=32
out=${BENCH_OUT:-$top/runs/bench-pretrain}
mkdir -p "$out"
bench_build --example pretrain_bench
bin=$FL_EXAMPLES
"$FL_BIN" --quiet prepare --input "$FEWLABELS_FASHION_MNIST/train-images-idx3-ubyte.gz" --size 32 \
  --output "$out/images"  # up to date after the first time
: > "$out/step.jsonl"
for i in 1 2 3; do
  "$bin/pretrain_bench" step "$threads" "$steps" $batch $labelled | tee -a "$out/step.jsonl"
  "$FEWLABELS_PYTHON" benches/pretrain/torch_step.py "$threads" "$steps" $batch $labelled | tee -a "$out/step.jsonl"
done
"$bin/pretrain_bench" loader "$threads" "$out/images" 256 100 | tee "$out/loader.jsonl"
"$FEWLABELS_PYTHON" - "$out/step.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {k: statistics.median(r["images_per_s"] for r in rows if r["impl"] == k) for k in ("tch", "pytorch")}
print(json.dumps({"tch_images_per_s": med["tch"], "pytorch_images_per_s": med["pytorch"],
                  "ratio": med["tch"] / med["pytorch"]}))
PY
