#!/usr/bin/env bash
# Issue 6's CPU run: the s3gan mode on Fashion-MNIST 32x32 with 10% of the
# labels, in a benchmark budget of about 30 minutes on 2 cores. Real stages
# end to end (prepare -> sample-labels -> shard with the labelled subset ->
# train-gan), then the last sample grid is copied to docs/.
#   benches/gan/fmnist_s3gan.sh [STEPS]   (default 1600: ~30 min here)
# Env: BENCH_OUT (runs/bench-s3gan), THREADS (2).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
steps=${1:-1600}
threads=${THREADS:-2}
out=${BENCH_OUT:-$top/runs/bench-s3gan}
bench_build
fl=$FL_BIN
mkdir -p "$out"
bench_fmnist_images "$out/images"
$fl --quiet sample-labels --images "$out/images" --fraction 0.1 --seed 0 --output "$out/labels"
$fl --quiet shard --images "$out/images" --labels "$out/labels" --output "$out/train"
# compare_gan's s3gan settings (lr G 1e-4, D 5e-4, 2 D steps, rotation
# weights 1.0 / 0.2) at a CPU size: ch 8, batch 64; an EMA (decay 0.99) over
# the second half: 0.9999 would average over more steps than the run has.
/usr/bin/time -f "train-gan: %e s wall" $fl --json train-gan --data "$out/train" --output "$out/gan" \
  --mode s3gan --resolution 32 --ch 8 --batch-size 64 --accumulation 1 --steps "$steps" \
  --ema-decay 0.99 --ema-start $((steps / 2)) --sample-every 200 --checkpoint-every 200 --log-every 20 \
  --device cpu --threads "$threads" | tee "$out/train-gan.json"
last=$(ls "$out/gan/samples/"step-*.png | tail -1)
mkdir -p docs && cp "$last" docs/s3gan-fashion-mnist-32.png
echo "grid: $last -> docs/s3gan-fashion-mnist-32.png" >&2
