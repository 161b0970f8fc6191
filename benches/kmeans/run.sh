#!/usr/bin/env bash
# k-means side by side (issue 4): fewlabels (libtorch back-end) vs
# scikit-learn KMeans vs faiss Kmeans on the same blobs, same k, at most the
# same number of Lloyd iterations (ours and scikit-learn's stop once no label
# changes; faiss always runs niter, so it is timed at both counts); then a projection
# to 1.28M x 2048, k = 1000; then the Fashion-MNIST pixel baseline by seed.
# Usage: benches/kmeans/run.sh [N D K ITERS]   (default 100000 512 1000 25)
# Env: BENCH_PROFILE (benches/env.sh), KMEANS_BENCH_DIR (data folder), KMEANS_BENCH_SKIP
# (space-separated parts to skip: blobs sklearn faiss project fashion).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
N=${1:-100000}; D=${2:-512}; K=${3:-1000}; ITERS=${4:-25}; SEED=0
. "$top/benches/env.sh"
py=${FEWLABELS_PYTHON:?run make setup first}
profile=$bench_profile
skip=" ${KMEANS_BENCH_SKIP:-} "
target=$CARGO_TARGET_DIR
out=${KMEANS_BENCH_DIR:-$target/bench-kmeans}
mkdir -p "$out"
cd "$top"
cargo build --locked --profile "$profile" --bench kmeans >&2
dir=$bench_dir
bin=$(ls -t "$target/$dir"/deps/kmeans-* | grep -v '\.d$' | head -1)
want() { [[ "$skip" != *" $1 "* ]]; }
echo "# data: make_blobs n=$N d=$D centers=$K -> $out" >&2
[ -f "$out/X.f32" ] && [ "$(stat -c %s "$out/X.f32")" = $((N * D * 4)) ] || "$py" "$here/peers.py" make "$out" "$N" "$D" "$K"
ours_iters=$ITERS
if want blobs; then
  line=$("$bin" --data "$out/X.f32" --labels "$out/y.i64" --n "$N" --d "$D" --k "$K" --iters "$ITERS" --seed $SEED --init kmeans-parallel)
  echo "$line"
  # Ours stops once no label changes (a further Lloyd step would change
  # nothing); faiss always runs niter. Time faiss at both counts.
  ours_iters=$(echo "$line" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["iterations"])')
  "$bin" --data "$out/X.f32" --labels "$out/y.i64" --n "$N" --d "$D" --k "$K" --iters "$ITERS" --seed $SEED --init random
fi
want faiss && "$py" "$here/peers.py" faiss "$out" "$N" "$D" "$K" "$ITERS" $SEED
want faiss && [ "$ours_iters" != "$ITERS" ] && "$py" "$here/peers.py" faiss "$out" "$N" "$D" "$K" "$ours_iters" $SEED
want sklearn && "$py" "$here/peers.py" sklearn "$out" "$N" "$D" "$K" "$ITERS" $SEED
want project && "$bin" --project --n 64000 --d 2048 --k "$K" --iters 3 --init kmeans-parallel
if want fashion; then
  fm=$out/fashion
  [ -f "$fm/X.f32" ] || "$py" "$here/peers.py" fashion "$fm" 60000 784 10
  for s in 0 1 2; do
    "$bin" --data "$fm/X.f32" --labels "$fm/y.i64" --n 60000 --d 784 --k 10 --iters 100 --tol 1e-4 --seed $s
  done
fi
