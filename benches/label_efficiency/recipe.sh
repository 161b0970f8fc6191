#!/usr/bin/env bash
# How the label-efficiency recipe is chosen, on a split the table is not
# scored on: short train-gan runs on Fashion-MNIST 32x32 at ch 8, batch 32,
# 800 steps, for a few learning-rate pairs and three modes (biggan, the
# paper's s3gan, s3gan-co), each scored by class consistency (the same
# independent judge run.sh uses) and FID of 500 samples against 2,000 of
# the TRAINING images; the table (run.sh) is scored against the 10,000 test
# images, which no run here sees. The pair with the best mean class
# consistency over the three modes is the recipe. Quality figures (they do
# not depend on the machine's load). ~45 min on 2 cores.
#   benches/label_efficiency/recipe.sh [PAIR...]   (default: every pair below)
# Environment: BENCH_OUT (runs/bench-recipe), THREADS (2).
# Prints one line per run and writes $BENCH_OUT/recipe.tsv (pair, mode,
# class consistency, FID) and, last, the chosen pair.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
out=${BENCH_OUT:-$top/runs/bench-recipe}
threads=${THREADS:-2}
mkdir -p "$out"
bench_build
fl="$FL_BIN --quiet"

# The training images, and the routes' inputs as run.sh makes them (same
# seeds, so the same labels, judge and pseudo-labels).
bench_fmnist_images "$out/images"
$fl sample-labels --images "$out/images" --fraction 0.95 --holdout 0.05 --seed 1 --output "$out/judge-labels"
$fl pretrain --images "$out/images" --labels "$out/judge-labels" --output "$out/judge" --arch micro \
  --objective supervised --steps 3000 --schedule cosine --eval-every 1000 --checkpoint-every 1000 \
  --device cpu --threads "$threads"
$fl sample-labels --images "$out/images" --fraction 0.1 --seed 0 --output "$out/labels-0.1"
$fl shard --images "$out/images" --output "$out/train-true" --rows-per-shard 20000
$fl shard --images "$out/images" --labels "$out/labels-0.1" --output "$out/train-subset-0.1" --rows-per-shard 20000
$fl pretrain --images "$out/images" --labels "$out/labels-0.1" --output "$out/pretrain-s2l-0.1" \
  --arch micro --objective s2l --steps 700 --batch-size 16 --labelled-batch-size 64 --device cpu --threads "$threads"
$fl embed --images "$out/images" --model "$out/pretrain-s2l-0.1" --output "$out/features-s2l-0.1" --threads "$threads"
$fl pseudo-label --method classifier --features "$out/features-s2l-0.1" --labels "$out/labels-0.1" \
  --images "$out/images" --output "$out/pseudo-s2l-0.1"
$fl shard --images "$out/images" --pseudo-labels "$out/pseudo-s2l-0.1" --output "$out/train-s2gan-0.1" --rows-per-shard 20000

# LR_G LR_D (the pairs a CPU run of 800 steps can use; compare_gan's own,
# G 1e-4 / D 5e-4 for batch 2048 and 250k steps, left every row one garment
# in the previous round's runs).
pairs=("2e-4 4e-4" "5e-4 1e-3" "1e-3 2e-3")
: > "$out/recipe.tsv"
for pair in "${pairs[@]}"; do
  read -r lr_g lr_d <<< "$pair"
  name="g${lr_g}-d${lr_d}"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  for route in "biggan train-true" "s3gan train-s2gan-0.1" "s3gan-co train-subset-0.1"; do
    read -r mode data <<< "$route"
    run="$out/$name/$mode"
    $fl train-gan --data "$out/$data" --output "$run/gan" --mode "$mode" --resolution 32 --ch 8 \
      --batch-size 32 --accumulation 1 --lr-g "$lr_g" --lr-d "$lr_d" --steps 800 --ema-decay 0.99 \
      --ema-start 400 --sample-every 100 --checkpoint-every 800 --device cpu --threads "$threads"
    # Against the training images: never the test images the table is scored on.
    $fl evaluate --gan "$run/gan" --reference "$out/images" --class-model "$out/judge" --output "$run/eval" \
      --num-samples 500 --repeats 1 --reference-limit 2000 --device cpu --threads "$threads"
    line=$(jq -r --arg p "$name" --arg m "$mode" \
      '"\($p)\t\($m)\t\(.sources[0].class_consistency)\t\(.sources[0].fid_mean)"' "$run/eval/scores.json")
    echo "$line" | tee -a "$out/recipe.tsv"
  done
done
# The chosen pair: the best mean class consistency over the modes.
awk -F'\t' '{s[$1] += $3; n[$1]++} END {for (p in s) printf "%s\t%.4f\n", p, s[p] / n[p]}' "$out/recipe.tsv" \
  | sort -t$'\t' -k2,2gr | tee "$out/recipe-ranking.tsv" | head -1 | sed 's/^/chosen: /'
