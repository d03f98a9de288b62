"""Tools shared by the CUDA kernel tests: where the CUDA headers and a C++ compiler are."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from landscape_fast._nvcc import find_nvcc


def cuda_include() -> Path | None:
    """A CUDA include directory with ``cuda_runtime.h`` and ``cuda_bf16.h``, if any."""
    candidates = []
    nvcc = find_nvcc()
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates += [Path(os.environ.get("CUDA_HOME", "/nonexistent")) / "include"]
    candidates += [Path("/usr/local/cuda/include")]
    for inc in candidates:
        if (inc / "cuda_runtime.h").exists() and (inc / "cuda_bf16.h").exists():
            return inc
    return None


def cxx() -> str | None:
    """The C++ compiler (``$CXX``, g++ or clang++)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a command, capturing its output as text."""
    return subprocess.run(cmd, capture_output=True, text=True)
