#!/usr/bin/env bash
# prepare benchmark: fewlabels prepare (to 128, PNG) against the two
# pipelines users run today, on the same files, in one run, on the cores
# given (default 2). Then the levers (DCT scaling, SIMD resize, PNG effort,
# encoding at all, threads) one at a time, and peak RSS for 10k and 100k
# inputs. Needs `make setup` (`make bench` runs it).
#
#   benches/prepare/run.sh            # everything (about 10 minutes on 2 cores)
#   PREPARE_BENCH_RSS=0 benches/prepare/run.sh   # skip the 100k RSS runs
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/benches/prepare
. "$top/benches/env.sh"
bin=${FEWLABELS_BIN:-$FL_BIN}
py=${FEWLABELS_PYTHON:?run make setup}
data=${FEWLABELS_BENCH_DATA:-$top/bench-data}
threads=${PREPARE_BENCH_THREADS:-2}
count=${PREPARE_BENCH_FILES:-6000}
corpus=$data/prepare-corpus-$count
work=$data/prepare-work
[ -n "${FEWLABELS_BIN:-}" ] || bench_build
mkdir -p "$data"
if [ ! -d "$corpus" ]; then
  "$py" "$here/make_corpus.py" "$FEWLABELS_PHOTOS" "$corpus" "$count"
fi
n=$(find "$corpus" -type f | wc -l)
rm -rf "$work" && mkdir -p "$work"
# Same files, warm page cache for every contender.
find "$corpus" -type f -exec cat {} + > /dev/null

# Runs a command under /usr/bin/time; prints "WALL_S PEAK_RSS_KB".
timed() {
  local log=$work/time.log
  /usr/bin/time -v -o "$log" "$@" > "$work/out.log" 2>&1 || { cat "$work/out.log" >&2; return 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); s=0; for(i=1;i<=n;i++) s=s*60+a[i]; print s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  echo "$wall $rss"
}
rate() { awk -v n="$1" -v t="$2" 'BEGIN {printf "%.0f", n / t}'; }

echo "prepare benchmark: $n JPEGs ($(du -sh "$corpus" | cut -f1)), $threads threads/processes, size 128, $(nproc) cores"
declare -A R
run_prepare() { # name, extra args...
  local name=$1; shift
  rm -rf "$work/out"
  read -r wall rss < <(timed "$bin" prepare --quiet --input "$corpus" --output "$work/out" --size 128 --threads "$threads" "$@")
  R[$name]=$(rate "$n" "$wall")
  printf "  %-44s %6s images/s  (%.2f s, peak RSS %d MB)\n" "$name" "${R[$name]}" "$wall" $((rss / 1024))
}
run_peer() { # name, script, extra args...
  local name=$1 script=$2; shift 2
  read -r wall rss < <(timed "$py" "$here/$script" "$corpus" "$work/peer.bin" --workers "$threads" --size 128 "$@")
  R[$name]=$(rate "$n" "$wall")
  printf "  %-44s %6s images/s  (%.2f s)\n" "$name" "${R[$name]}" "$wall"
}

echo "== head to head (wall clock of each command, start-up included)"
run_prepare "fewlabels prepare (PNG)"
run_peer "BigGAN-PyTorch make_hdf5 (PIL)" peer_biggan.py
run_peer "img2dataset resizer (OpenCV)" peer_img2dataset.py
run_peer "BigGAN-PyTorch + PIL draft mode" peer_biggan.py --draft
awk -v a="${R[fewlabels prepare (PNG)]}" -v b="${R[BigGAN-PyTorch make_hdf5 (PIL)]}" -v c="${R[img2dataset resizer (OpenCV)]}" -v d="${R[BigGAN-PyTorch + PIL draft mode]}" \
  'BEGIN {printf "  ratios: %.2fx BigGAN-PyTorch (bar 2.5x), %.2fx img2dataset (bar 2x), %.2fx PIL draft\n", a/b, a/c, a/d}'

echo "== levers (one change each from the default)"
run_prepare "default: DCT scaling, SIMD, PNG fast"
run_prepare "--jpeg-scaling off" --jpeg-scaling off
FEWLABELS_RESIZE_NO_SIMD=1 run_prepare "scalar resize (FEWLABELS_RESIZE_NO_SIMD)"
run_prepare "--png-compression default (zlib 6)" --png-compression default
run_prepare "--codec raw (no encoding)" --codec raw
run_prepare "--codec jpeg --quality 90" --codec jpeg
threads_saved=$threads; threads=1
run_prepare "--threads 1"
threads=$threads_saved
du -sh "$work/out" | awk '{print "  (PNG output of the --threads 1 run: " $1 ")"}'

if [ "${PREPARE_BENCH_RSS:-1}" != 0 ]; then
  echo "== peak RSS against input count (list files repeating the corpus)"
  for total in 10000 100000; do
    list=$work/list-$total.csv
    "$py" - "$corpus" "$list" "$total" <<'PY'
import os, sys
root, out, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
with open(out, "w") as f:
    f.write("path,label\n")
    for i in range(total):
        p = files[i % len(files)]
        f.write(f"{p},{os.path.basename(os.path.dirname(p))}\n")
PY
    rm -rf "$work/out"
    read -r wall rss < <(timed "$bin" prepare --quiet --input "$list" --output "$work/out" --size 128 --threads "$threads")
    printf "  %7d inputs: peak RSS %4d MB, %.1f s (%s images/s)\n" "$total" $((rss / 1024)) "$wall" "$(rate "$total" "$wall")"
    rm -rf "$work/out"
  done
fi
rm -rf "$work"
