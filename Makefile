# fewlabels: `make demo` runs the built-in demo pipeline, `make test` the tests.
# Both run `make setup` first (idempotent; seconds when already done).
SHELL := /bin/bash
.DEFAULT_GOAL := build

-include build/env.mk
export LIBTORCH
export LIBTORCH_CXX11_ABI := 1
export FEWLABELS_PYTHON
export FEWLABELS_PHOTOS
export FEWLABELS_FASHION_MNIST
export FEWLABELS_INCEPTION

CARGO ?= cargo
# Build outputs live in the per-user cache too, so a fresh clone on the same
# machine (CI's) reuses the compiled dependencies instead of spending ~20
# minutes of 2 cores on polars, arrow and torch-sys again.
CACHE ?= $(HOME)/.cache/fewlabels
export CARGO_TARGET_DIR ?= $(CACHE)/target
BIN := $(CARGO_TARGET_DIR)/release/fewlabels
# The demo uses the build the tests use (dependencies fully optimised, the
# heavy work in libtorch): on 2 cores a second, release-profile compilation
# of polars, arrow and torch-sys would take longer than the demo itself.
DEMO_BIN := $(CARGO_TARGET_DIR)/debug/fewlabels

.PHONY: setup build test demo bench install fmt lint clean-runs

setup:
	@scripts/setup.sh

# The env file must exist before the other targets read LIBTORCH.
build/env.mk:
	@scripts/setup.sh

build: setup
	$(MAKE) --no-print-directory _build

_build:
	$(CARGO) build --release --locked

test: setup
	$(MAKE) --no-print-directory _test

_test:
	$(CARGO) test --locked -- --test-threads 2

demo: setup
	$(MAKE) --no-print-directory _demo

_demo:
	$(CARGO) build --locked
	$(DEMO_BIN) run pipelines/demo.toml

# Benchmarks build what they time in the dev profile (benches/env.sh):
# dependencies fully optimised, the heavy work in libtorch and the decoders.
bench: setup
	benches/run.sh

# `fewlabels` on PATH: the build the tests and the demo use, copied to
# $(PREFIX)/bin (default ~/.local/bin).
PREFIX ?= $(HOME)/.local
install: setup
	$(MAKE) --no-print-directory _install

_install:
	$(CARGO) build --locked
	scripts/install.sh $(DEMO_BIN) $(PREFIX)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean-runs:
	rm -rf runs
