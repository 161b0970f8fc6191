# Source this (`. scripts/env.sh`) to use plain `cargo` commands with the
# cached libtorch, as the Makefile does. Run `make setup` once first.
_fl_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -f "$_fl_top/build/env.mk" ]; then
  echo "scripts/env.sh: $_fl_top/build/env.mk is missing; run 'make setup' first" >&2
else
  while IFS= read -r _fl_line; do
    case "$_fl_line" in ''|'#'*) continue ;; esac
    export "${_fl_line%% :=*}=${_fl_line#*:= }"
  done < "$_fl_top/build/env.mk"
  export LIBTORCH_CXX11_ABI=1
  # Where the Makefile builds: compiled dependencies shared by every clone.
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/fewlabels/target}
fi
unset _fl_top _fl_line
