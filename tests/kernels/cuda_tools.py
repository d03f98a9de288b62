"""Tools shared by the CUDA kernel tests: where the CUDA headers and a C++ compiler are."""

from __future__ import annotations

import ctypes
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


#: UndefinedBehaviorSanitizer: aborts on a misaligned 16-byte access, which would be a
#: "misaligned address" fault on a GPU, and on other undefined behaviour.
UBSAN = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]


def build_emulation(source: Path, out: Path, header: Path, load) -> ctypes.CDLL:
    """Compile a CUDA kernel source as host C++ against the emulation ``header`` (with
    UBSan where its runtime exists), load it with ``load`` and declare the emulation hook
    ``lf_emu_configure``."""
    cmd = [cxx(), "-std=c++17", "-O1", "-g", "-shared", "-fPIC", "-x", "c++",
           f"-I{cuda_include()}", "-Wall", "-Wextra", "-Werror", "-Wno-attributes",
           "-Wno-unknown-pragmas", f'-DLF_HOST_EMULATION="{header}"',
           str(source), "-o", str(out)]  # fmt: skip
    proc = run([*cmd, *UBSAN])
    if proc.returncode != 0 and "sanitize" in proc.stderr:  # no UBSan runtime: build without
        proc = run(cmd)
    assert proc.returncode == 0, f"emulation build failed:\n{proc.stderr[-4000:]}"
    lib = load(out)
    lib.lf_emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint] + [ctypes.c_int] * 3
    lib.lf_emu_configure.restype = ctypes.c_int
    return lib
