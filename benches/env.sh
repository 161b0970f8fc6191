# Sourced by every benches/*/run.sh: the cached libtorch and Python (make
# setup; also the target folder the Makefile uses) and the binaries to time.
# BENCH_PROFILE: dev (default; the build `make test` and `make demo` use, with
# dependencies fully optimised: the heavy work is in libtorch and the
# decoders either way) or release.
bench_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$bench_top/scripts/env.sh"
bench_profile=${BENCH_PROFILE:-dev}
if [ "$bench_profile" = dev ]; then bench_dir=debug; else bench_dir=$bench_profile; fi
# Builds the fewlabels binary (and any examples named) in the bench profile,
# unless FL_BIN names a binary already (a copy that a long benchmark keeps
# using while the tree is rebuilt).
if [ -n "${FL_BIN:-}" ]; then
  bench_build() { :; }
else
  bench_build() {
    (cd "$bench_top" && cargo build --locked --profile "$bench_profile" --bin fewlabels "$@" >&2)
  }
  FL_BIN=$CARGO_TARGET_DIR/$bench_dir/fewlabels
fi
FL_EXAMPLES=$CARGO_TARGET_DIR/$bench_dir/examples
# Fashion-MNIST's 60,000 training images at 32x32 as an `images/` stage
# folder at $1 (up to date, so instant, after the first time).
bench_fmnist_images() {
  "$FL_BIN" --quiet prepare --input "$FEWLABELS_FASHION_MNIST/train-images-idx3-ubyte.gz" --size 32 \
    --class-names "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot" \
    --output "$1"
}
