# landscape_fast: every set-up step behind the README's two commands.
#   make demo   -> venv + deps + native build, then `landscape-fast demo`
#   make test   -> venv + deps + native build, then lint and the fast test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 (CPU) lies on local disk here; any torch >= 2.11 works (GPU machines: set
# TORCH_SPEC=torch to keep the preinstalled one).
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.8.0
DEPS := "$(TORCH_SPEC)" numpy setuptools wheel ninja pytest pytest-benchmark scikit-learn scipy matplotlib ruff "$(TRITON_SPEC)" pyhessian==0.1
# 2 shared cores: OpenMP spin-waiting makes multi-threaded runs up to 30x slower.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=
NATIVE_SRC := $(wildcard csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.package-built
DOCTEST_IGNORE := --ignore=landscape_fast/kernels/cpp --ignore=landscape_fast/kernels/cuda \
	--ignore=landscape_fast/kernels/triton --ignore=landscape_fast/__main__.py

.PHONY: install demo test test-all lint format bench bench-peers bench-peers-deps check-cuda info clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check $(DEPS)
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) setup.py pyproject.toml $(NATIVE_SRC)
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

install: $(BUILD_STAMP)

demo: install
	$(VENV)/bin/landscape-fast demo

info: install
	$(PY) -m landscape_fast.info

lint: install
	$(VENV)/bin/ruff check landscape_fast tests bench setup.py
	$(VENV)/bin/ruff format --check landscape_fast tests bench setup.py

format: install
	$(VENV)/bin/ruff format landscape_fast tests bench setup.py
	$(VENV)/bin/ruff check --fix landscape_fast tests bench setup.py

# The fast suite (CI): unit tests, doctests, benchmarks run once each as tests.
# pytest exits 5 when it collects nothing; that is not a failure here.
test: lint
	$(PY) -m pytest -q -m "not slow and not gpu" --benchmark-disable --doctest-modules \
		$(DOCTEST_IGNORE) tests landscape_fast bench $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

# Everything, slow cases included.
test-all: install
	$(PY) -m pytest -q --benchmark-disable tests bench $(PYTEST_ARGS)

check-cuda:
	bash csrc/cuda/check.sh

bench: install
	$(PY) bench/bench_block_reorth.py

# Side-by-side benchmark against PyHessian, hessian-eigenthings, curvlinops and scipy ARPACK
# (bench/peers/README.md). The peers (the `bench` extra) go in with --no-deps: their declared
# dependencies would pull torchvision and a different torch. BENCH_PEERS_ARGS="--tiny ..."
BENCH_PEER_DEPS := pyhessian==0.1 "hessian-eigenthings>=1.0.0a5" curvlinops-for-pytorch==3.0.1 \
	scipy tqdm einops einconv linear_operator opt-einsum
BENCH_PEERS_STAMP := $(VENV)/.bench-peers-installed
BENCH_PEERS_ARGS ?= --out bench/results/peers_cpu.md

$(BENCH_PEERS_STAMP): $(BUILD_STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --pre $(BENCH_PEER_DEPS)
	touch $@

bench-peers-deps: $(BENCH_PEERS_STAMP)

bench-peers: $(BENCH_PEERS_STAMP)
	$(PY) -m bench.peers $(BENCH_PEERS_ARGS)

clean:
	rm -rf build *.egg-info landscape_fast/_C*.so landscape_fast/_cuda_kernels.so \
		landscape_fast/_build_info.json .pytest_cache .benchmarks
