"""Locate ``nvcc`` (shared by ``setup.py``, which loads this file by path, and the tests).

Example:
    >>> from landscape_fast._nvcc import find_nvcc
    >>> find_nvcc() is None or find_nvcc().endswith("nvcc")
    True
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_nvcc() -> str | None:
    """``$NVCC``, else ``$CUDA_HOME/bin/nvcc``, else ``/usr/local/cuda/bin/nvcc``, else PATH."""
    explicit = os.environ.get("NVCC")
    if explicit:
        return explicit
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and Path(home, "bin", "nvcc").exists():
            return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")
