#!/usr/bin/env bash
# Issue 5's CPU run on Fashion-MNIST 32x32 with 10% of the labels (9% to
# train on, 1% held out), real stages end to end, each network given the
# same wall-clock budget on the same threads:
#  1. S2L (rotation on every image + w x CE of the linear head on the
#     labelled ones) -> embed -> classifier pseudo-labels: accuracy on the 90%
#     of images whose labels were hidden; k-means (k = 10) on its features;
#  2. the supervised-only baseline (the labelled 10% alone), same budget;
#  3. k-means (k = 10) on raw pixels, the baseline NMI;
#  4. with ROT_BUDGET > 0, rotation-only pretraining -> k-means NMI.
# Step counts come from a short timed calibration of each objective, so that
# each training run fits BUDGET seconds (default 1200: 20 minutes).
#   BUDGET=1200 THREADS=2 benches/pretrain/fmnist_s2l.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
budget=${BUDGET:-1200}
rot_budget=${ROT_BUDGET:-0}
threads=${THREADS:-2}
arch=${ARCH:-micro}
out=${BENCH_OUT:-$top/runs/bench-pretrain}
bench_build
fl=$FL_BIN
mkdir -p "$out"
bench_fmnist_images "$out/images"
$fl --quiet sample-labels --images "$out/images" --fraction 0.09 --holdout 0.01 --seed 0 --output "$out/labels"
img=$out/images lab=$out/labels
common=(--threads "$threads" --device cpu --arch "$arch" --schedule cosine --checkpoint-every 100000)
declare -A args=(
  [s2l]="--labels $lab --objective s2l --batch-size 16 --labelled-batch-size 64 --class-weight 1"
  [sup]="--labels $lab --objective supervised --labelled-batch-size 64"
  [rot]="--objective rotation --batch-size 64"
)
calc() { "$FEWLABELS_PYTHON" -c "print($1)"; }
# Seconds for N steps of an objective, start-up included.
timed() {
  local what=$1 n=$2 t0
  rm -rf "$out/calibrate-$what"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  $fl --quiet pretrain --images "$img" --output "$out/calibrate-$what" --steps "$n" --eval-every 0 \
    --warmup-steps 1 ${args[$what]} "${common[@]}"
  calc "$(date +%s.%N) - $t0"
}
# Steps that fit a budget: per-step time and start-up from 10- and 50-step runs.
steps_for() {
  local what=$1 secs=$2 a b
  a=$(timed "$what" 10); b=$(timed "$what" 50)
  rm -rf "$out/calibrate-$what"
  calc "int(($secs - ($a - 10 * ($b - $a) / 40)) / (($b - $a) / 40))"
}
train() {
  local what=$1 secs=$2 steps
  steps=$(steps_for "$what" "$secs")
  echo "== $what: $steps steps for a budget of $secs s" >&2
  rm -rf "$out/$what"
  # shellcheck disable=SC2086
  /usr/bin/time -f "$what: %e s wall" $fl --json pretrain --images "$img" --output "$out/$what" \
    --steps "$steps" --eval-every $((steps / 4)) ${args[$what]} "${common[@]}" | tee "$out/$what.json"
  $fl --json embed --images "$img" --model "$out/$what" --output "$out/$what-features" \
    --threads "$threads" --device cpu > "$out/$what-embed.json"
}
score() {  # classifier pseudo-labels (when the model has a head) and k-means on the same features
  local what=$1 method=$2
  rm -rf "$out/$what-pseudo"
  $fl --json pseudo-label --method "$method" --compare-kmeans --features "$out/$what-features" \
    --labels "$lab" --images "$img" --output "$out/$what-pseudo" | tee "$out/$what-pseudo.json"
}
train s2l "$budget"; score s2l classifier
train sup "$budget"; score sup classifier
$fl --json embed --images "$img" --model pixels --output "$out/pixels-features" --threads "$threads" > /dev/null
score pixels kmeans
if [ "$rot_budget" -gt 0 ]; then train rot "$rot_budget"; score rot kmeans; fi
"$FEWLABELS_PYTHON" - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def counts(name):
    return json.load(open(f"{out}/{name}/_stage.json"))["counts"]
print("| run | steps | train wall s | holdout acc | acc on hidden labels | k-means NMI of its features |")
print("| --- | --- | --- | --- | --- | --- |")
for what in ("s2l", "sup", "rot", "pixels"):
    if not os.path.exists(f"{out}/{what}-pseudo/_stage.json"):
        continue
    p = counts(f"{what}-pseudo")
    nmi = p.get("kmeans_quality_nmi", p.get("quality_nmi"))
    if what == "pixels":
        print(f"| raw pixels | | | | | {nmi:.3f} |")
        continue
    m = json.load(open(f"{out}/{what}/_stage.json"))
    c = m["counts"]
    hidden = p.get("quality_predicted_accuracy")
    hidden = f"{hidden:.3f}" if hidden is not None else ""
    hold = c.get("holdout_accuracy")
    hold = f"{hold:.3f}" if hold is not None else ""
    print(f"| {what} | {c.get('steps')} | {m['timings']['seconds']:.0f} | {hold} | {hidden} | {nmi:.3f} |")
PY
