#!/usr/bin/env bash
# The paper's label-efficiency table on real data. Fashion-MNIST at 32x32
# through the real stages, every labelling route of the paper with the same
# G/D width, steps, batch, learning rates, three seeds each, each run scored by
# `evaluate` against the 10,000 test images (FID, KID, precision/recall,
# class consistency by a judge none of the routes labelled with):
#   biggan         100% of the labels
#   s2gan          10%   pseudo-labels of an S2L-pretrained classifier
#   s3gan          10%, 2.5%, 20%   s2gan's pseudo-labels (S2L at that fraction) + rotation in D
#   s2gan-co       10%   co-training in D
#   s3gan-co       10%   co-training + rotation in D
#   clustering     0%    k-means (k = 10) on rotation-pretrained features
#   unconditional  0%
# The recipe (LR_G / LR_D) is recipe.sh's choice, made against the training
# images, never these test images.
#
#   benches/label_efficiency/run.sh            (~4 h on 2 cores; `make bench` runs it)
# Environment: BENCH_OUT (runs/bench-label-efficiency), THREADS (2),
# SEEDS ("0 1 2"), STEPS, CH, BATCH, LR_G, LR_D, D_STEPS, EMA_START (the GAN
# recipe, below), SAMPLES (1000 per GAN), PRETRAIN_STEPS (700, as the demo),
# JUDGE_STEPS (3000), REFERENCE_LIMIT (0: all 10,000 test images), ROWS (all;
# e.g. "biggan-100 s3gan-10").
# RESULTS ($BENCH_OUT/results.csv): one row per GAN run, appended as each is
# scored (with the date, the load when it started and the judge's accuracy);
# runs already there are skipped, so a stopped benchmark resumes.
# Prints the table; writes $BENCH_OUT/by_route.md (mean and spread over the
# seeds), each run's scores in $BENCH_OUT/eval/RUN/, one grid per run in
# $BENCH_OUT/grids/, and the wall time of every command in $BENCH_OUT/times.tsv.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
out=${BENCH_OUT:-$top/runs/bench-label-efficiency}
threads=${THREADS:-2}
# The recipe every row shares: what a 2-core CPU trains in minutes, chosen
# by recipe.sh on the training images (BENCHMARKS.md, "Label efficiency").
steps=${STEPS:-800}
ch=${CH:-8}
batch=${BATCH:-32}
lr_g=${LR_G:-5e-4}
lr_d=${LR_D:-1e-3}
d_steps=${D_STEPS:-2}
ema_start=${EMA_START:-$((steps / 2))}
samples=${SAMPLES:-1000}
pretrain_steps=${PRETRAIN_STEPS:-700}
judge_steps=${JUDGE_STEPS:-3000}
reference_limit=${REFERENCE_LIMIT:-0}
seeds=${SEEDS:-"0 1 2"}
rows=${ROWS:-"biggan-100 s2gan-10 s3gan-10 s2gan-co-10 s3gan-co-10 clustering-0 unconditional-0 s3gan-2.5 s3gan-20"}
mkdir -p "$out/grids"
bench_build
fl="$FL_BIN --quiet"
fm=$FEWLABELS_FASHION_MNIST
names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"

# Runs a command once (its output folder's manifest makes a re-run a no-op)
# and records its wall time.
timed() {
  local what=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  printf '%s\t%.1f\n' "$what" "$(echo "$t1 - $t0" | bc)" >> "$out/times.tsv"
}

# 1. Data: the 60,000 training images and the 10,000 test images (the FID reference).
bench_fmnist_images "$out/images"
$fl prepare --input "$fm/t10k-images-idx3-ubyte.gz" --size 32 --class-names "$names" --output "$out/reference"
for f in 0.2 0.1 0.025; do
  $fl sample-labels --images "$out/images" --fraction "$f" --seed 0 --output "$out/labels-$f"
done

# 2. The judge of class consistency: a classifier trained on 95% of the
# training labels (5% held out), the same for every row and independent of
# all of them.
$fl sample-labels --images "$out/images" --fraction 0.95 --holdout 0.05 --seed 1 --output "$out/judge-labels"
timed judge $fl pretrain --images "$out/images" --labels "$out/judge-labels" --output "$out/judge" \
  --arch micro --objective supervised --steps "$judge_steps" --schedule cosine --eval-every 1000 \
  --checkpoint-every 1000 --device cpu --threads "$threads"

# 3. Training tables for each route.
$fl shard --images "$out/images" --output "$out/train-true"
$fl shard --images "$out/images" --labels "$out/labels-0.1" --output "$out/train-subset-0.1"
# S2GAN and S3GAN: rotation + linear head (S2L) on the kept labels,
# classifier pseudo-labels, at each label fraction.
for f in 0.1 0.2 0.025; do
  timed "pretrain-s2l-$f" $fl pretrain --images "$out/images" --labels "$out/labels-$f" --output "$out/pretrain-s2l-$f" \
    --arch micro --objective s2l --steps "$pretrain_steps" --batch-size 16 --labelled-batch-size 64 \
    --device cpu --threads "$threads"
  timed "embed-s2l-$f" $fl embed --images "$out/images" --model "$out/pretrain-s2l-$f" --output "$out/features-s2l-$f" --threads "$threads"
  timed "pseudo-label-s2l-$f" $fl pseudo-label --method classifier --features "$out/features-s2l-$f" --labels "$out/labels-$f" \
    --images "$out/images" --output "$out/pseudo-s2l-$f"
  $fl shard --images "$out/images" --pseudo-labels "$out/pseudo-s2l-$f" --output "$out/train-s2gan-$f"
done
# Clustering: rotation only (no labels), k-means with k = 10.
timed pretrain-rotation $fl pretrain --images "$out/images" --output "$out/pretrain-rotation" \
  --arch micro --objective rotation --steps "$pretrain_steps" --batch-size 16 --device cpu --threads "$threads"
timed embed-rotation $fl embed --images "$out/images" --model "$out/pretrain-rotation" --output "$out/features-rotation" --threads "$threads"
timed pseudo-label-kmeans $fl pseudo-label --method kmeans --clusters 10 --features "$out/features-rotation" \
  --images "$out/images" --output "$out/pseudo-kmeans"
$fl shard --images "$out/images" --pseudo-labels "$out/pseudo-kmeans" --output "$out/train-clustering"

# 4. The GANs: one recipe, one run per row and seed, each scored against the
# 10,000 test images as soon as it is trained (the reference statistics are
# cached, so each evaluation costs only its own samples) and its row appended
# to $RESULTS. A run whose name is already there is skipped: the benchmark
# resumes where it stopped, in this session or a later one.
results=${RESULTS:-$out/results.csv}
gan() {  # ROW DATA MODE SEED
  local row=$1 data=$2 mode=$3 seed=$4 run load
  case " $rows " in *" $row "*) ;; *) return 0 ;; esac
  run="$row-seed$seed"
  if [ -f "$results" ] && cut -d, -f1 "$results" | grep -qx "$run"; then
    echo "label-efficiency: $run is in $results, skipped"
    return 0
  fi
  load=$(cut -d' ' -f1 /proc/loadavg)
  timed "gan $run" $fl train-gan --data "$out/$data" --output "$out/gan/$run" --mode "$mode" --seed "$seed" \
    --resolution 32 --ch "$ch" --batch-size "$batch" --accumulation 1 --d-steps "$d_steps" \
    --lr-g "$lr_g" --lr-d "$lr_d" --steps "$steps" --ema-decay 0.99 --ema-start "$ema_start" \
    --sample-every 100 --checkpoint-every "$steps" --log-every 20 --device cpu --threads "$threads"
  cp "$(ls "$out/gan/$run/samples/"step-*.png | tail -1)" "$out/grids/$run.png"
  rm -rf "$out/eval/$run"
  timed "evaluate $run" $fl evaluate --gan "$out/gan/$run" --reference "$out/reference" --class-model "$out/judge" \
    --output "$out/eval/$run" --num-samples "$samples" --repeats 1 --reference-limit "$reference_limit" \
    --device cpu --threads "$threads"
  "$FEWLABELS_PYTHON" benches/label_efficiency/append_result.py "$out/eval/$run" "$results" "$load"
}
# Seeds outermost: a benchmark stopped part-way has every route at its
# first seeds rather than some routes at all three and others at none.
for seed in $seeds; do
  gan biggan-100 train-true biggan "$seed"
  gan s2gan-10 train-s2gan-0.1 s2gan "$seed"
  gan s3gan-10 train-s2gan-0.1 s3gan "$seed"
  gan s2gan-co-10 train-subset-0.1 s2gan-co "$seed"
  gan s3gan-co-10 train-subset-0.1 s3gan-co "$seed"
  gan clustering-0 train-clustering clustering "$seed"
  gan unconditional-0 train-true unconditional "$seed"
  gan s3gan-2.5 train-s2gan-0.025 s3gan "$seed"
  gan s3gan-20 train-s2gan-0.2 s3gan "$seed"
done

# 5. Mean and spread over the seeds of every row in $RESULTS.
"$FEWLABELS_PYTHON" benches/label_efficiency/by_route.py "$results" | tee "$out/by_route.md"
cat "$out/times.tsv"
