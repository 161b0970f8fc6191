#!/usr/bin/env bash
# Class-sorted input (issue 13): the demo route up to pseudo-labels on
# Fashion-MNIST's IDX file (random order) and on the same images as class
# folders (a listing sorted by class, as ImageNet's). Prints each run's
# pseudo-label accuracy on the hidden labels; they should agree within 1 point.
#   benches/order/run.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. benches/env.sh
out=${BENCH_OUT:-$top/runs/bench-order}
mkdir -p "$out"
bench_build
[ -d "$out/fm-folders" ] || "$FEWLABELS_PYTHON" benches/order/fm_folders.py "$FEWLABELS_FASHION_MNIST" "$out/fm-folders"
sed -e "s#^run-dir = .*#run-dir = \"$out/idx\"#" \
    -e "s#^input = .*#input = \"$FEWLABELS_FASHION_MNIST/train-images-idx3-ubyte.gz\"#" pipelines/demo.toml > "$out/idx.toml"
sed -e "s#^run-dir = .*#run-dir = \"$out/folders\"#" -e "s#^input = .*#input = \"$out/fm-folders\"#" \
    -e '/^class-names/d' pipelines/demo.toml > "$out/folders.toml"
for v in idx folders; do
  "$FL_BIN" --quiet run "$out/$v.toml" --until pseudo-label
  "$FEWLABELS_PYTHON" -c "
import json, sys
c = json.load(open('$out/$v/pseudo_labels/_stage.json'))['counts']
print(json.dumps({'input': '$v', 'pseudo_label_accuracy_hidden': c['quality_predicted_accuracy'], 'nmi': c['quality_nmi']}))"
done
