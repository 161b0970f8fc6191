#!/usr/bin/env bash
# `make bench`: every benchmark, side by side with the tool a user would
# otherwise pick. Each area's run.sh prints its figures; BENCHMARKS.md records them.
# Run one area with: benches/run.sh prepare
set -uo pipefail
cd "$(dirname "$0")"
status=0
for area in ${1:-prepare duplicates kmeans pretrain gan evaluate order distributed label_efficiency}; do
  if [ -x "$area/run.sh" ]; then
    echo "== $area"
    "$area/run.sh" || { echo "bench $area failed" >&2; status=1; }
  fi
done
exit $status
