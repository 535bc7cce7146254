# alexnet_rs: `make demo` (the main job) and `make test` (everything CI checks).
# Every target installs what it needs: a project .venv with the pinned torch, pip's nvcc 13.0,
# Debian's Fashion-MNIST package (as root), and real sample images from PyPI wheels (.cache/).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON3 ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
SITE = $(shell test -x $(PY) && $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
FEATURES ?= cuda
BIN := target/release/alexnet
FOOLBOX := $(CACHE)/data/foolbox
SKIMAGE := $(CACHE)/data/skimage
AIBENCH := $(CACHE)/data/ai_benchmark

# torch-sys finds libtorch through the venv's python (LIBTORCH_USE_PYTORCH); cc finds $NVCC.
export PATH := $(VENV)/bin:$(PATH)
export VIRTUAL_ENV := $(VENV)
export LIBTORCH_USE_PYTORCH := 1
export CARGO_BUILD_JOBS ?= 2
export NVCC = $(SITE)/nvidia/cu13/bin/nvcc

.PHONY: help setup venv data fashion-mnist fonts images build python stubs demo test test-rust lint test-python cuda-emu cuda-emu-sanitize gpu-check-cpu gpu-artifacts compare bench-lrn-kernels clean

help:
	@echo "make demo   - set up, then train AlexNet on Fashion-MNIST (<= 10 min on 2 cores) into runs/demo/"
	@echo "make test   - set up, then cargo test + rustfmt/clippy + pytest + the CUDA kernels on the host emulation (plain, ASan/UBSan)"
	@echo "make lint   - rustfmt --check and clippy with warnings as errors (part of make test)"
	@echo "make cuda-emu - our CUDA kernels built for the CPU (kernels/emu/) and swept against torch (<= 5 min)"
	@echo "make setup  - .venv (torch 2.11.0, nvcc 13.0), data, the alexnet binary and the Python extension"
	@echo "make compare - same weights in torchvision's AlexNet and ours: parity and speed ratios (compare/)"
	@echo "make gpu-artifacts - dist/ for scripts/gpu-check on a GPU machine"
	@echo "make bench-lrn-kernels - the CPU LRN kernels alone, timed in C++ (BENCHMARKS.md)"

setup: venv data build python

venv: $(VENV)/.installed
$(VENV)/.installed: scripts/requirements-dev.txt
	@test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r scripts/requirements-dev.txt
	@touch $@

data: fashion-mnist fonts images

# Fashion-MNIST from Debian (used by training; installed when we are root).
fashion-mnist:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing and we are not root: run 'sudo apt-get install dataset-fashion-mnist'"; \
	fi

# DejaVu Sans, the text of curves.png and the other figures (without it they have none).
fonts:
	@if [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then \
	  echo "DejaVu Sans: /usr/share/fonts/truetype/dejavu"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core; \
	else \
	  echo "DejaVu Sans is missing and we are not root: run 'sudo apt-get install fonts-dejavu-core'"; \
	fi

# Real images shipped inside PyPI wheels (read as files; nothing is imported):
# foolbox: 20 labelled ImageNet JPEGs + CIFAR PNGs; scikit-image: odd formats (RGBA, grey, TIFF,
# GIF); ai-benchmark: 100 ImageNet-like 512x512 JPEGs (the data benchmark).
images: $(FOOLBOX)/.done $(SKIMAGE)/.done $(AIBENCH)/.done
$(FOOLBOX)/.done: | venv
	$(PY) -m pip download --quiet --no-deps foolbox==3.3.4 -d $(CACHE)/wheels
	$(PY) scripts/unpack_wheel_data.py $(CACHE)/wheels/foolbox-3.3.4-*.whl foolbox/data/ $(FOOLBOX)
	@touch $@
$(SKIMAGE)/.done: | venv
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: scikit-image==0.26.0 -d $(CACHE)/wheels
	$(PY) scripts/unpack_wheel_data.py $(CACHE)/wheels/scikit_image-0.26.0-*.whl skimage/data/ $(SKIMAGE)
	@touch $@
$(AIBENCH)/.done: | venv
	$(PY) -m pip download --quiet --no-deps ai-benchmark==0.1.2 -d $(CACHE)/wheels
	$(PY) scripts/unpack_wheel_data.py $(CACHE)/wheels/ai_benchmark-0.1.2-*.whl ai_benchmark/data/classification/ $(AIBENCH)
	@touch $@

build: venv
	cargo build --release --features $(FEATURES)

# The abi3 wheel (dist/), installed into the project venv.
python: venv
	rm -f dist/alexnet_rs-*.whl dist/BUILD
	$(VENV)/bin/maturin build --release --features python,$(FEATURES) -i $(PY) --out dist
	$(PY) -m pip install --quiet --force-reinstall --no-deps dist/alexnet_rs-*.whl

# python/alexnet_rs/settings.py (the TrainSettings TypedDict) from the settings' Rust definition.
stubs: python
	$(PY) scripts/gen_settings.py

# The main job: train AlexNet on Fashion-MNIST (scripts/demo.toml: <= 570 s of training on a
# 2-core CPU), then evaluate the checkpoint. Leaves metrics, curves.png and a checkpoint in runs/demo/.
demo: setup
	$(BIN) info --preset paper
	rm -rf runs/demo
	$(BIN) train --config scripts/demo.toml
	$(BIN) eval runs/demo

test: setup test-rust lint test-python cuda-emu cuda-emu-sanitize gpu-check-cpu

test-rust: target/bench-lrn-kernels
	$(PY) tests/pth_fixtures.py
	cargo test --release --features $(FEATURES)
	@# The GPU code actually embedded in the CUDA kernels' archive (for the CI log):
	@for f in target/release/build/alexnet_rs-*/out/libalexnet_cuda.a; do [ -f "$$f" ] || continue; \
	  echo "$$f: $$(strings $$f | grep -oE 'sm_[0-9]+|compute_[0-9]+' | sort -u | tr '\n' ' ')"; done

# rustfmt and clippy (warnings are errors; functions over 80 lines too), src/ files under 500 lines; skipped, saying so, where the toolchain lacks them.
lint:
	@if cargo fmt --version >/dev/null 2>&1; then cargo fmt --check; else echo "lint: rustfmt not installed, format check skipped"; fi
	@if cargo clippy --version >/dev/null 2>&1; then cargo clippy --release --features python,$(FEATURES) --all-targets -- -D warnings; \
	  else echo "lint: clippy not installed, skipped (rustup component add clippy)"; fi
	@# No src/ file over 500 lines (functions: clippy's too_many_lines, clippy.toml).
	@find src -name '*.rs' -exec wc -l {} + | awk '$$2 != "total" && $$1 > 500 { print "lint: " $$2 " has " $$1 " lines (over 500): split it"; bad = 1 } END { exit bad }'

test-python:
	cd tests && $(PY) -m pytest -q -rs --durations=25 python
	cd /tmp && $(PY) -m mypy.stubtest alexnet_rs._native

# Our CUDA kernels compiled by g++ against the CUDA emulation in kernels/emu/ and checked against
# F.local_response_norm / F.conv2d in float64 (tests/cuda_emu/emu.py); the last line is a JSON summary.
cuda-emu: venv
	$(PY) tests/cuda_emu/emu.py

# The same build and sweep under AddressSanitizer + UndefinedBehaviorSanitizer.
cuda-emu-sanitize: venv
	$(PY) tests/cuda_emu/emu.py --sanitize

# torchvision comparison: same weights -> logits/gradient differences, speed ratios (compare/).
compare: setup
	$(PY) -m alexnet_rs.compare --out compare

# The CPU LRN kernels alone, no allocation or autograd (BENCHMARKS.md, "CPU LRN"), with build.rs's
# flags for the AVX2 build (an AVX2 CPU runs it). make test builds it, so it keeps compiling.
bench-lrn-kernels: target/bench-lrn-kernels
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} target/bench-lrn-kernels

target/bench-lrn-kernels: benches/lrn_kernels.cpp kernels/lrn_cpu_kernels.h
	mkdir -p target
	g++ -std=c++17 -O3 -fopenmp -mavx2 -mfma -fno-math-errno -fno-trapping-math -Ikernels $< -o $@

# scripts/gpu-check's CPU mode: every part of the GPU check that needs no GPU.
# The GPU script's own code on the CPU (parity, the fused op, gradcheck/opcheck, the CLI matrix,
# small benchmarks), over the installed wheel: a bug in it would otherwise cost the GPU run.
gpu-check-cpu: python
	PYTHON=$(PY) scripts/gpu-check --cpu --out $(CACHE)/gpu-check-cpu

# What travels to the GPU machine (no Rust there): the abi3 wheel, which carries the `alexnet`
# CLI too, and dist/BUILD (the commit it was built from); scripts/gpu-check installs it there
# (README: "On a GPU machine"). dist/ is ignored by git: the device call carries it.
gpu-artifacts: python
	rm -f dist/alexnet
	git describe --always --dirty > dist/BUILD
	@du -h dist/alexnet_rs-*.whl; cat dist/BUILD

clean:
	cargo clean
	rm -rf dist $(CACHE)
