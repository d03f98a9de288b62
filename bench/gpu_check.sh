#!/usr/bin/env bash
# The prepared device check for a session that is lent a GPU (H200: Python 3.12, torch 2.11
# + CUDA 13, triton 3.6, nvcc 13; nothing can be downloaded there). One run, about 5 min:
#   build against the preinstalled torch, GPU tests of the CUDA and Triton backends, the
#   cross-backend equivalence tests on CUDA tensors, and the CUDA primitive timings.
# Logs go to $OUT (the device tool brings them back). Usage (device `run` tool):
#   bash bench/gpu_check.sh
set -uo pipefail
OUT="${OUT:-/tmp/lf_gpu_out}"
mkdir -p "$OUT"
export LANDSCAPE_FAST_CUDA_ARCHS="${LANDSCAPE_FAST_CUDA_ARCHS:-90}" OMP_NUM_THREADS=4
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1 \
  || { echo "install failed"; tail -50 "$OUT/install.log"; exit 1; }
python -m landscape_fast.info | tee "$OUT/info.txt"
python -m pytest -q -x tests/kernels/test_cuda_block_reorth.py -m gpu 2>&1 | tee "$OUT/cuda_tests.log" | tail -5
python -m pytest -q tests/kernels/test_triton_block_reorth.py 2>&1 | tee "$OUT/triton_tests.log" | tail -5
python -m pytest -q tests/ops/test_block_reorth.py -k "cuda or triton" 2>&1 | tee "$OUT/ops_tests.log" | tail -5
python tests/kernels/test_cuda_block_reorth.py 2>&1 | tee "$OUT/cuda_bench.txt" | tail -30
# softmax_ce_hvp kernels and the curvature operators on CUDA tensors
python -m pytest -q tests/kernels/test_cuda_softmax_ce_hvp.py tests/kernels/test_triton_softmax_ce_hvp.py 2>&1 | tee "$OUT/softmax_ce_kernels.log" | tail -5
python -m pytest -q tests/ops/test_softmax_ce_hvp.py -k "cuda or triton" 2>&1 | tee "$OUT/softmax_ce_ops.log" | tail -5
python -m pytest -q -m gpu tests/operators 2>&1 | tee "$OUT/operators_gpu.log" | tail -5
# stochastic estimators on CUDA operators (CPU numbers reproduced), SLQ block vs one at a time
python -m pytest -q -m gpu tests/linalg 2>&1 | tee "$OUT/linalg_gpu.log" | tail -5
python bench/bench_slq.py --device cuda --repeats 3 2>&1 | tee "$OUT/slq_cuda.md" | tail -20
