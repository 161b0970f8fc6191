#!/usr/bin/env bash
# How the label-efficiency recipe was chosen (BENCHMARKS.md, "A CPU recipe"):
# short train-gan runs on Fashion-MNIST 32x32 at ch 8 with different learning
# rates, batch sizes, D steps and lengths, each scored by class consistency
# (an independent classifier trained on 95% of the labels) and FID on 200
# samples against 500 test images. Quality figures: they do not depend on
# the machine's load. ~1.5 h on 2 cores.
#   benches/label_efficiency/recipe.sh [NAME...]   (default: every run below)
# Environment: BENCH_OUT (runs/bench-recipe), THREADS (2).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
out=${BENCH_OUT:-$top/runs/bench-recipe}
threads=${THREADS:-2}
mkdir -p "$out"
bench_build
fl="$FL_BIN --quiet"
fm=$FEWLABELS_FASHION_MNIST
names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"

bench_fmnist_images "$out/images"
$fl prepare --input "$fm/t10k-images-idx3-ubyte.gz" --size 32 --class-names "$names" --output "$out/test"
$fl sample-labels --images "$out/images" --fraction 0.95 --holdout 0.05 --seed 0 --output "$out/judge-labels"
$fl pretrain --images "$out/images" --labels "$out/judge-labels" --output "$out/judge" --arch micro \
  --objective supervised --steps 3000 --schedule cosine --eval-every 1000 --checkpoint-every 1000 \
  --device cpu --threads "$threads"
$fl sample-labels --images "$out/images" --fraction 0.1 --seed 0 --output "$out/labels-0.1"
$fl shard --images "$out/images" --output "$out/train-true" --rows-per-shard 20000
$fl shard --images "$out/images" --labels "$out/labels-0.1" --output "$out/train-subset-0.1" --rows-per-shard 20000

# NAME MODE DATA BATCH STEPS D_STEPS LR_G LR_D
runs=(
  "A biggan train-true 64 400 2 1e-4 5e-4"
  "B biggan train-true 64 400 2 2e-4 2e-4"
  "C biggan train-true 64 400 2 5e-4 1e-3"
  "D biggan train-true 64 400 2 1e-3 2e-3"
  "E biggan train-true 64 400 1 2e-4 4e-4"
  "F biggan train-true 64 400 2 2e-3 4e-3"
  "G biggan train-true 32 800 2 1e-3 2e-3"
  "H biggan train-true 64 600 1 1e-3 2e-3"
  "J s3gan train-subset-0.1 32 800 2 1e-3 2e-3"
  "K s3gan train-subset-0.1 32 800 2 5e-4 1e-3"
  "L biggan train-true 32 800 2 5e-4 1e-3"
)
for r in "${runs[@]}"; do
  read -r name mode data batch steps d_steps lr_g lr_d <<< "$r"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  $fl train-gan --data "$out/$data" --output "$out/$name/gan" --mode "$mode" --resolution 32 --ch 8 \
    --batch-size "$batch" --accumulation 1 --d-steps "$d_steps" --lr-g "$lr_g" --lr-d "$lr_d" \
    --steps "$steps" --ema-decay 0.99 --ema-start $((steps / 2)) --sample-every 100 \
    --checkpoint-every "$steps" --device cpu --threads "$threads"
  $fl evaluate --gan "$out/$name/gan" --reference "$out/test" --class-model "$out/judge" \
    --output "$out/$name/eval" --num-samples 200 --repeats 1 --reference-limit 500 --device cpu --threads "$threads"
  jq -r --arg r "$r" '"\($r): class consistency \(.sources[0].class_consistency), FID \(.sources[0].fid_mean)"' \
    "$out/$name/eval/scores.json"
done
