#!/usr/bin/env bash
# k-means side by side (issue 15): fewlabels vs faiss vs scikit-learn, each
# timed from reading the same `features/` Arrow files to having every
# point's label, each run RUNS times (the table keeps the best):
#   fashion  Fashion-MNIST 32x32 RGB pixels from the real `embed --model pixels`
#            (60,000 x 3,072), k = 10: the whole `fewlabels pseudo-label` command
#   blobs    sklearn make_blobs 100,000 x 512, 1,000 centres, k = 1,000: the whole
#            command and the library call (benches/kmeans/main.rs fit)
#   project  seeding, iterations and assignment timed on 64,000 x 2,048 random
#            points, scaled to ImageNet's 1.28M x 2,048, k = 1,000
#   quality  NMI by seed (0-4) for fewlabels and faiss on both sets (untimed)
# Usage: benches/kmeans/run.sh [PARTS...]   (default: fashion blobs project)
# Env: BENCH_PROFILE (benches/env.sh), KMEANS_BENCH_DIR (data), KMEANS_BENCH_RUNS (2),
# KMEANS_BENCH_PREPARE_ONLY=1 (build and make the data, time nothing: run that
# with `heavy`, then the timing with `bench-alone`), KMEANS_BENCH_SKLEARN_BLOBS
# (runs of scikit-learn on the blobs, 1: it takes minutes), KMEANS_BENCH_CACHE
# (warm: the features files are read into the page cache before each contender,
# default; cold: dropped from it, so each contender reads them from disk).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
. "$top/benches/env.sh"
py=${FEWLABELS_PYTHON:?run make setup first}
out=${KMEANS_BENCH_DIR:-$CARGO_TARGET_DIR/bench-kmeans}
runs=${KMEANS_BENCH_RUNS:-2}
sk_blobs=${KMEANS_BENCH_SKLEARN_BLOBS:-1}
cache=${KMEANS_BENCH_CACHE:-warm}
parts=${*:-fashion blobs project}
mkdir -p "$out"
cd "$top"
bench_build
cargo build --locked --profile "$bench_profile" --bench kmeans >&2
bin=$(ls -t "$CARGO_TARGET_DIR/$bench_dir"/deps/kmeans-* | grep -v '\.d$' | head -1)
want() { [[ " $parts " == *" $1 "* ]]; }

# The data, made once (every step is skipped when up to date).
fm=$out/fm32
bench_fmnist_images "$fm/images" >&2
"$FL_BIN" --quiet embed --images "$fm/images" --model pixels --output "$fm/features" >&2
bl=$out/blobs
[ -f "$out/X.f32" ] && [ "$(stat -c %s "$out/X.f32")" = $((100000 * 512 * 4)) ] ||
  "$py" "$here/peers.py" make "$out" 100000 512 1000
[ -f "$bl/features/_stage.json" ] ||
  "$bin" stage-folders --data "$out/X.f32" --labels "$out/y.i64" --n 100000 --d 512 --out "$bl" >&2
[ "${KMEANS_BENCH_PREPARE_ONLY:-0}" = 1 ] && exit 0

lines=$out/lines-$cache.jsonl
: > "$lines"
# Tags each JSON line with its data set, keeps it for the table, and shows it.
tag() { sed -u "s/^{/{\"set\": \"$1\", \"cache\": \"$cache\", /" | tee -a "$lines"; }
at() { "$py" "$here/peers.py" cache "$cache" "$1/features"; }
ours() { at "$1"; "$py" "$here/peers.py" stage "$FL_BIN" "$1/features" "$1/images" "$2" 0 "$out/pl-$3"; }
peer() { at "$2"; "$py" "$here/peers.py" "$1" "$2/features" "$2/images" "$3" 0; }
for r in $(seq "$runs"); do
  if want fashion; then
    ours "$fm" 10 fashion | tag fashion
    peer faiss "$fm" 10 | tag fashion
    peer sklearn "$fm" 10 | tag fashion
  fi
  if want blobs; then
    ours "$bl" 1000 blobs | tag blobs
    at "$bl"; "$bin" fit --features "$bl/features" --images "$bl/images" --k 1000 | tag blobs
    peer faiss "$bl" 1000 | tag blobs
    if [ "$r" -le "$sk_blobs" ]; then peer sklearn "$bl" 1000 | tag blobs; fi
  fi
done
want project && "$bin" project --n 64000 --d 2048 --k 1000 --iters 3 | tag project
if want quality; then
  for s in 0 1 2 3 4; do
    "$bin" fit --features "$fm/features" --images "$fm/images" --k 10 --seed "$s" | tag "fashion-seed$s"
    "$py" "$here/peers.py" faiss "$fm/features" "$fm/images" 10 "$s" | tag "fashion-seed$s"
    "$bin" fit --features "$bl/features" --images "$bl/images" --k 1000 --seed "$s" | tag "blobs-seed$s"
    "$py" "$here/peers.py" faiss "$bl/features" "$bl/images" 1000 "$s" | tag "blobs-seed$s"
  done
fi
echo "# best of $runs runs (seconds from reading the features file to every label; ours: the whole command)"
"$py" "$here/peers.py" compare "$lines"
