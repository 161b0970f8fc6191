#!/usr/bin/env bash
# duplicates benchmark: `fewlabels duplicates` (decode every stored image,
# pHash and pixel key, pairs inside the table and against the reference by
# multi-index hashing, the table written) on Fashion-MNIST's 60,000 training
# images against its 10,000 test images (the natural FID reference), both
# prepared at 32x32, side by side with what a user would run instead: PIL
# decoding the same PNGs and `imagehash.phash` in 2 processes
# (peer_imagehash.py; its numpy all-pairs count of the training rows that
# duplicate a test row is printed beside ours, untimed). Each contender
# twice, the better run counts; images/s = (train + test) / wall clock.
# Run it alone on a quiet machine (`bench-alone benches/duplicates/run.sh`).
#
#   benches/duplicates/run.sh                  # 60,000 + 10,000 images
#   DUP_BENCH_N=600 benches/duplicates/run.sh  # the first 600 + 100 (a check that it runs)
#   BENCH_PROFILE=release ...                  # time the release build (default: dev, as make bench)
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
here=$top/benches/duplicates
. "$top/benches/env.sh"
py=${FEWLABELS_PYTHON:?run make setup}
data=${FEWLABELS_BENCH_DATA:-$top/bench-data}
threads=${DUP_BENCH_THREADS:-2}
distance=${DUP_BENCH_MAX_DISTANCE:-4}
n=${DUP_BENCH_N:-}
bench_build
work=$data/duplicates${n:+-$n}
mkdir -p "$work"
names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"

# The IDX files prepared: Fashion-MNIST's, or their first N (and N/6) images.
idx() { # split (train | t10k), count or empty
  local src=$FEWLABELS_FASHION_MNIST/$1-images-idx3-ubyte.gz
  if [ -z "$2" ]; then echo "$src"; return; fi
  local dst=$work/idx/$1-images-idx3-ubyte.gz
  mkdir -p "$work/idx"
  [ -f "$dst" ] || "$py" - "$src" "$dst" "$2" <<'PY'
import gzip, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for kind, item, head in (("images-idx3", 784, 16), ("labels-idx1", 1, 8)):
    s, d = src.replace("images-idx3", kind), dst.replace("images-idx3", kind)
    raw = gzip.open(s).read()
    out = bytearray(raw[:head])
    out[4:8] = n.to_bytes(4, "big")
    out += raw[head:head + n * item]
    with gzip.open(d, "wb") as f:
        f.write(out)
PY
  echo "$dst"
}
train_n=${n}
test_n=${n:+$((n / 6))}
for split in train t10k; do
  count=$train_n; [ "$split" = t10k ] && count=$test_n
  "$FL_BIN" --quiet prepare --input "$(idx "$split" "$count")" --size 32 --class-names "$names" \
    --output "$work/$split"
done
total=$("$py" -c "import json,sys; print(sum(json.load(open(f'$work/{s}/_stage.json'))['counts']['written'] for s in ('train','t10k')))")
# Warm: the tables in the page cache, libtorch's libraries loaded once.
cat "$work"/train/*.arrow "$work"/t10k/*.arrow > /dev/null
"$FL_BIN" --version > /dev/null

now() { date +%s.%N; }
echo "duplicates benchmark: $(nproc) cores, $threads threads/processes, $total images (Fashion-MNIST train + test at 32x32), max distance $distance, binary $FL_BIN ($bench_profile profile)"
best_fl=0
for i in 1 2; do
  rm -rf "$work/out"
  t0=$(now)
  "$FL_BIN" --quiet --json duplicates --images "$work/train" --reference "$work/t10k" \
    --max-distance "$distance" --threads "$threads" --output "$work/out" > "$work/fl.json"
  wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}')
  r=$(awk -v n="$total" -v t="$wall" 'BEGIN {printf "%.0f", n / t}')
  printf "  fewlabels duplicates, run %d: %.2f s, %s images/s\n" "$i" "$wall" "$r"
  [ "$r" -gt "$best_fl" ] && best_fl=$r
done
"$py" - "$work/fl.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["counts"]
print(f"  fewlabels found: {c['reference_pairs']} train-test pairs ({c['reference_exact']} exact), "
      f"{c['rows_duplicating_reference']} training images duplicating a test image; "
      f"{c['within_pairs']} pairs inside train ({c['within_exact']} exact)")
PY
best_py=0
for i in 1 2; do
  t0=$(now)
  "$py" "$here/peer_imagehash.py" "$work/train" "$work/t10k" --workers "$threads" \
    --max-distance "$distance" > "$work/peer.json"
  wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}')
  hash_s=$("$py" -c "import json; print(json.load(open('$work/peer.json'))['hash_seconds'])")
  r=$(awk -v n="$total" -v t="$wall" 'BEGIN {printf "%.0f", n / t}')
  printf "  imagehash.phash (PIL, %d processes), run %d: %.2f s in all (%.2f s hashing), %s images/s\n" \
    "$threads" "$i" "$wall" "$hash_s" "$r"
  [ "$r" -gt "$best_py" ] && best_py=$r
done
"$py" -c "import json; j = json.load(open('$work/peer.json')); print(f\"  imagehash + numpy all pairs found: {j['rows_duplicating_reference']} training images duplicating a test image ({j['search_seconds']:.2f} s of the run)\")"
awk -v a="$best_fl" -v b="$best_py" 'BEGIN {printf "  ratio: fewlabels duplicates %.2fx imagehash (best of 2 each, wall clock of the whole command)\n", a / b}'
