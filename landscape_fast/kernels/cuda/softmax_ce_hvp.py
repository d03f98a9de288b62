"""``softmax_ce_hvp`` on CUDA tensors through the kernel in ``csrc/cuda/softmax_ce_hvp.cu``.

One CTA per sample row computes the softmax statistics once (online max and normalizer,
warp-shuffle reductions), then, per group of four tangents, the dots ``⟨p, u_j⟩`` and the
output ``w p ⊙ (u_j − ⟨p, u_j⟩)``; see the ``.cu`` file for the design. The launch is
enqueued on the current stream of the tensors' device through the library's plain C ABI
(``lf_softmax_ce_hvp``), loaded with ctypes from the same ``_cuda_kernels.so`` as the other
CUDA kernels.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from landscape_fast.kernels.cuda import _library
from landscape_fast.ops.softmax_ce_hvp import LOGIT_DTYPES

_int, _i64, _ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
#: ``name: (argtypes, restype)`` of every function this module calls.
SIGNATURES: dict[str, tuple[list, object]] = {
    "lf_softmax_ce_hvp_threads": ([], _int),
    "lf_softmax_ce_hvp_tangents_per_pass": ([], _int),
    "lf_softmax_ce_hvp_ctas_per_sm": ([], _int),
    "lf_softmax_ce_hvp": (
        [_int, _int, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _int, _ptr],
        _int,
    ),
}


def load_library(path: str | os.PathLike[str]) -> ctypes.CDLL:
    """Load a kernel library at ``path`` and declare the signatures this module uses."""
    return _library.declare(path, SIGNATURES)


@functools.cache
def library() -> ctypes.CDLL:
    """The installed kernel library (``_build_info.json``'s ``cuda_library``), loaded once."""
    return _library.installed("softmax_ce_hvp", SIGNATURES)


def _check(logits: torch.Tensor, U: torch.Tensor, weights, out: torch.Tensor) -> None:
    if logits.dim() != 2 or U.dim() != 3 or out.shape != U.shape:
        raise ValueError(
            "softmax_ce_hvp (cuda): logits must be (N, C), U and out (k, N, C); got "
            f"{tuple(logits.shape)}, {tuple(U.shape)}, {tuple(out.shape)}"
        )
    k, N, C = U.shape
    if tuple(logits.shape) != (N, C) or C == 0:
        raise ValueError(
            f"softmax_ce_hvp (cuda): logits {tuple(logits.shape)} do not match U "
            f"{tuple(U.shape)} (or C = 0)"
        )
    if U.dtype not in LOGIT_DTYPES or logits.dtype not in LOGIT_DTYPES[U.dtype]:
        raise TypeError(
            f"softmax_ce_hvp (cuda): unsupported dtypes logits={logits.dtype}, U={U.dtype}"
        )
    if out.dtype != U.dtype:
        raise TypeError(f"softmax_ce_hvp (cuda): out must be {U.dtype}, got {out.dtype}")
    tensors = [("logits", logits), ("U", U), ("out", out)]
    if weights is not None:
        acc = torch.float64 if U.dtype == torch.float64 else torch.float32
        if weights.shape != (N,) or weights.dtype != acc:
            raise ValueError(
                f"softmax_ce_hvp (cuda): weights must be ({N},) {acc}, got "
                f"{tuple(weights.shape)} {weights.dtype}"
            )
        tensors.append(("weights", weights))
    for name, t in tensors:
        if not t.is_contiguous():
            raise ValueError(f"softmax_ce_hvp (cuda): {name} must be contiguous")
        if t.device != U.device:
            raise ValueError(f"softmax_ce_hvp (cuda): {name} is on {t.device}, U on {U.device}")


def softmax_ce_hvp_with(
    lib: ctypes.CDLL,
    logits: torch.Tensor,
    U: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
    device: int,
    stream: int,
) -> None:
    """Launch on an explicit library, device index and stream (no device-type checks)."""
    _check(logits, U, weights, out)
    k, N, C = U.shape
    code = lib.lf_softmax_ce_hvp(
        _library.DTYPE_CODES[logits.dtype],
        _library.DTYPE_CODES[U.dtype],
        logits.data_ptr(),
        U.data_ptr(),
        weights.data_ptr() if weights is not None else None,
        out.data_ptr(),
        k,
        N,
        C,
        device,
        stream,
    )
    _library.raise_on_error(lib, code, "softmax_ce_hvp")


def softmax_ce_hvp_(
    logits: torch.Tensor,
    U: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """Write ``out[j, n] = w_n p_n ⊙ (U[j, n] − ⟨p_n, U[j, n]⟩)`` on CUDA tensors."""
    if U.device.type != "cuda":
        raise ValueError(f"softmax_ce_hvp (cuda): expected CUDA tensors, got {U.device}")
    device = U.device
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        softmax_ce_hvp_with(library(), logits, U, weights, out, device.index, stream)
