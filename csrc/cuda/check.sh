#!/usr/bin/env bash
# Compile-check every csrc/cuda/*.cu for one architecture with all warnings as errors.
#
#   bash csrc/cuda/check.sh            # sm_90 (H100/H200), exits non-zero on any warning/error
#   CUDA_ARCH=80 bash csrc/cuda/check.sh
#
# Uses $NVCC, else $CUDA_HOME/bin/nvcc, else /usr/local/cuda/bin/nvcc, else nvcc on PATH.
# Exits 0 with a notice when no nvcc exists (nothing to check on such machines).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
arch="${CUDA_ARCH:-90}"

nvcc="${NVCC:-}"
if [[ -z "$nvcc" ]]; then
  for cand in "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
    if [[ -n "$cand" && -x "$cand" ]]; then nvcc="$cand"; break; fi
  done
fi
if [[ -z "$nvcc" ]]; then
  echo "csrc/cuda/check.sh: no nvcc found; skipping the CUDA compile check"
  exit 0
fi

shopt -s nullglob
sources=("$here"/*.cu)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "csrc/cuda/check.sh: no .cu files in $here"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
for src in "${sources[@]}"; do
  name="$(basename "$src" .cu)"
  if "$nvcc" -c -arch="sm_${arch}" -std=c++17 -Xcompiler -fPIC -Werror all-warnings \
      "$src" -o "$tmp/$name.o"; then
    echo "ok    $name.cu (sm_${arch})"
  else
    echo "FAIL  $name.cu (sm_${arch})" >&2
    status=1
  fi
done
exit "$status"
