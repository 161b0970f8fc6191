#!/usr/bin/env bash
# A screenshot of a run's report.html in headless Chromium (Debian package
# `chromium`, installed here if missing), to look at what a reader sees:
#   scripts/screenshot-report.sh runs/demo/report.html docs/demo-report.png [WIDTH] [HEIGHT]
set -euo pipefail
report=$(realpath "${1:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]}")
out=$(realpath -m "${2:?usage: screenshot-report.sh REPORT.html OUT.png [WIDTH] [HEIGHT]}")
width=${3:-1100}
height=${4:-1400}
command -v chromium > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size="$width,$height" --screenshot="$out" "file://$report" 2> /dev/null
echo "$out"
