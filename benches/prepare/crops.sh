#!/usr/bin/env bash
# What storing whole photos for compare_gan's crops costs (issue 25): the
# ImageNet pipelines stored the 160x160 centre square and drew the
# distorted crops inside it; now they store the whole photo with its
# shorter side at 192 (`prepare --resize keep-ratio`) and draw them over all
# of it. On the same photos (benches/prepare's photo corpus: the 20 real
# ImageNet photos re-encoded at 256x192 to 1024x768), PNG and JPEG:
#   - disk: bytes per stored image;
#   - the training loader: images/s of batches of 256 distorted crops
#     resized to 128 (decode + crop + resize, no network), each twice.
#   benches/prepare/crops.sh     (a few minutes; run it alone: `uptime` < 0.5)
# Environment: BENCH_OUT (runs/bench-crops), COUNT (3000 photos), THREADS (2).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
out=${BENCH_OUT:-$top/runs/bench-crops}
count=${COUNT:-3000}
threads=${THREADS:-2}
mkdir -p "$out"
bench_build --example pretrain_bench
if [ ! -d "$out/photos" ]; then
  "$FEWLABELS_PYTHON" benches/prepare/make_photo_corpus.py "$FEWLABELS_PHOTOS" "$out/photos" "$count" >&2
fi
echo "uptime: $(uptime)"
printf 'stored\tcodec\tbytes_per_image\tloader_images_per_s\n'
for codec in png jpeg; do
  for how in "crop 160" "keep-ratio 192"; do
    read -r resize size <<< "$how"
    dir="$out/$codec-$resize-$size"
    "$FL_BIN" --quiet prepare --input "$out/photos" --output "$dir" --size "$size" --resize "$resize" \
      --codec "$codec" --threads "$threads"
    n=$(jq '[.outputs[] | select(.path | startswith("images-")) | .rows] | add' "$dir/_stage.json")
    bytes=$(jq '[.outputs[] | select(.path | startswith("images-")) | .bytes] | add' "$dir/_stage.json")
    cat "$dir"/images-*.arrow > /dev/null  # in the page cache for both timed passes
    for pass in 1 2; do
      rate=$("$FL_EXAMPLES/pretrain_bench" loader "$threads" "$dir" 256 20 128 | jq '.images_per_s')
      printf '%s %s\t%s\t%.0f\t%.0f\n' "$resize" "$size" "$codec" "$(echo "$bytes / $n" | bc -l)" "$rate"
    done
  done
done
