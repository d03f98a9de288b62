"""Loading the CUDA kernel library (``_cuda_kernels.so``) with ctypes, shared by every op.

Each op module declares the C functions it calls (``SIGNATURES``: name -> (argtypes,
restype)); :func:`declare` loads a library and applies them, :func:`installed` loads the
installed library once per op, and :func:`raise_on_error` turns a ``cudaError_t`` into a
``RuntimeError`` with CUDA's message.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from landscape_fast import _backend

#: dtype codes of the C ABI (``csrc/cuda/*.cu``).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
}

Signatures = dict[str, tuple[list, object]]


def declare(path: str | os.PathLike[str], signatures: Signatures) -> ctypes.CDLL:
    """Load the library at ``path`` and declare ``signatures`` (a missing symbol raises)."""
    lib = ctypes.CDLL(os.fspath(path))
    for name, (argtypes, restype) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    return lib


@functools.cache
def _installed_path() -> str:
    path = _backend._cuda_library_path()
    if path is None:
        raise RuntimeError(
            "the CUDA kernels are not built (no nvcc at install time, or "
            "LANDSCAPE_FAST_BUILD_CUDA=0); reinstall where nvcc exists"
        )
    return os.fspath(path)


def installed(op: str, signatures: Signatures) -> ctypes.CDLL:
    """The installed kernel library with ``op``'s signatures declared."""
    try:
        return declare(_installed_path(), signatures)
    except RuntimeError as err:
        raise RuntimeError(f"{op}: {err}") from None


def raise_on_error(lib: ctypes.CDLL, code: int, op: str, what: str = "launch") -> None:
    """Raise ``RuntimeError`` with CUDA's message unless ``code`` is 0 (``cudaSuccess``)."""
    if code == 0:
        return
    text = "unknown error"
    try:  # exported by csrc/cuda/block_reorth.cu in the installed library
        fn = lib.lf_cuda_error_string
    except AttributeError:  # a library built from one kernel alone (emulation tests)
        fn = None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_char_p
        msg = fn(code)
        text = msg.decode(errors="replace") if msg else text
    raise RuntimeError(f"{op}: CUDA {what} failed: {text} (cudaError_t {code})")
