#!/usr/bin/env bash
# Puts a built fewlabels binary on PATH: copies it to PREFIX/bin (default
# ~/.local/bin, on PATH in most shells' login profiles). The binary finds
# libtorch by the absolute rpath of the build (the per-user cache
# `make setup` filled), so it runs from anywhere on this machine.
#   scripts/install.sh BINARY [PREFIX]        (`make install` calls it)
set -euo pipefail
bin=${1:?usage: install.sh BINARY [PREFIX]}
prefix=${2:-$HOME/.local}
[ -x "$bin" ] || { echo "install: $bin is not a built binary (run make build or cargo build)" >&2; exit 2; }
mkdir -p "$prefix/bin"
cp "$bin" "$prefix/bin/fewlabels.tmp"
mv "$prefix/bin/fewlabels.tmp" "$prefix/bin/fewlabels"
echo "installed $prefix/bin/fewlabels ($("$prefix/bin/fewlabels" --version))" >&2
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "install: $prefix/bin is not on PATH; add it: export PATH=\"$prefix/bin:\$PATH\"" >&2 ;;
esac
