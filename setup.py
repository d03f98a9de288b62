"""Build landscape_fast's native code against the installed torch.

* ``landscape_fast._C``: C++/OpenMP CPU kernels (``csrc/cpu/*.cpp``), registered as
  ``torch.ops.landscape_fast.*`` through ``TORCH_LIBRARY`` with minimal ATen headers.
* ``landscape_fast/_cuda_kernels*.so``: CUDA kernels (``csrc/cuda/*.cu``) with a plain C ABI,
  compiled by ``nvcc`` wherever it exists (loaded with ctypes; usable where torch has CUDA).
* ``landscape_fast/_build_info.json``: what was built, against which torch.

Environment switches:
  LANDSCAPE_FAST_NO_EXT=1      build nothing native (pure-Python install, seconds)
  LANDSCAPE_FAST_BUILD_CUDA=0  skip the CUDA kernels even where nvcc exists
  LANDSCAPE_FAST_PORTABLE=1    no -march=native (for binaries that move between machines)
  LANDSCAPE_FAST_CUDA_ARCHS    nvcc architectures, default "80;90"
  NVCC                         path of nvcc (default: $CUDA_HOME/bin/nvcc, then PATH)

Install with ``pip install --no-build-isolation -e .`` so the extension is compiled
against the torch that will run it.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
NO_EXT = os.environ.get("LANDSCAPE_FAST_NO_EXT", "0") == "1"


def _load_find_nvcc():
    """``landscape_fast._nvcc.find_nvcc``, loaded by path (the package is not built yet)."""
    spec = importlib.util.spec_from_file_location("_lf_nvcc", ROOT / "landscape_fast" / "_nvcc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.find_nvcc


def _cuda_arch_flags() -> list[str]:
    archs = os.environ.get("LANDSCAPE_FAST_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
    flags = []
    for arch in filter(None, (a.strip() for a in archs)):
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    last = [a for a in archs if a.strip()][-1].strip()
    flags += ["-gencode", f"arch=compute_{last},code=compute_{last}"]  # PTX for newer GPUs
    return flags


def build_cuda_library(out_path: Path) -> str | None:
    """Compile csrc/cuda/*.cu into one shared library; return an error string on failure."""
    nvcc = _load_find_nvcc()()
    sources = sorted(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
    if nvcc is None or not sources:
        return "nvcc not found" if nvcc is None else "no CUDA sources"
    cmd = [
        nvcc,
        "-O3",
        "-std=c++17",
        "-shared",
        "-Xcompiler",
        "-fPIC",
        "-cudart",
        "static",
        *_cuda_arch_flags(),
        "-o",
        str(out_path),
        *sources,
    ]
    print("landscape_fast: building CUDA kernels:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"nvcc failed:\n{proc.stderr[-4000:]}"
    return None


ext_modules = []
cmdclass = {}
if not NO_EXT:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    cxx_flags = ["-O3", "-fopenmp", "-std=c++20", "-DNDEBUG"]
    if os.environ.get("LANDSCAPE_FAST_PORTABLE", "0") != "1":
        cxx_flags.append("-march=native")
    ext_modules.append(
        CppExtension(
            "landscape_fast._C",
            sorted(
                str(Path(p).relative_to(ROOT))
                for p in glob.glob(str(ROOT / "csrc" / "cpu" / "*.cpp"))
            ),
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    )

    class BuildExt(BuildExtension):
        """Build ``_C``, then the CUDA library if possible, then record the build info."""

        def run(self) -> None:
            super().run()
            pkg_dir = Path(self.get_ext_fullpath("landscape_fast._C")).parent
            info = {
                "torch": torch.__version__,
                "torch_cuda": torch.version.cuda,
                "cxx_flags": cxx_flags,
                "python": sys.version.split()[0],
            }
            if os.environ.get("LANDSCAPE_FAST_BUILD_CUDA", "1") != "0":
                lib = pkg_dir / "_cuda_kernels.so"
                err = build_cuda_library(lib)
                if err is None:
                    info["cuda_library"] = lib.name
                    info["cuda_archs"] = os.environ.get("LANDSCAPE_FAST_CUDA_ARCHS", "80;90")
                else:
                    print(f"landscape_fast: CUDA kernels not built: {err}", flush=True)
                    info["cuda_error"] = err.splitlines()[0]
            pkg_dir.mkdir(parents=True, exist_ok=True)
            (pkg_dir / "_build_info.json").write_text(json.dumps(info, indent=2) + "\n")

    cmdclass["build_ext"] = BuildExt

setup(ext_modules=ext_modules, cmdclass=cmdclass)
