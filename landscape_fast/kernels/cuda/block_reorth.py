"""``block_reorth`` on CUDA tensors through the kernels in ``csrc/cuda/block_reorth.cu``.

The three streaming passes (:func:`project`, :func:`update_`, :func:`transform_`) run as
CUDA kernels called through ctypes; the ``b × b`` CholeskyQR2 bookkeeping is shared with
the other kernel backends (:mod:`landscape_fast.kernels.block_reorth_driver`). Every
launch is enqueued on the current stream of ``W``'s device; outputs and workspace are
allocated with torch (caching allocator) on that stream.

Blocks wider than :func:`max_block` rows (64) are refused; the registry declares this
(:data:`landscape_fast.ops.block_reorth.MAX_BLOCK`) so automatic selection moves on to Triton.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

from landscape_fast.kernels.block_reorth_driver import cgs2_cholqr2
from landscape_fast.kernels.cuda import _library

#: Basis dtypes the kernels accept for each block dtype.
BASIS_DTYPES: dict[torch.dtype, tuple[torch.dtype, ...]] = {
    torch.float64: (torch.float64,),
    torch.float32: (torch.float32, torch.bfloat16, torch.float16),
}
_PROJECT, _UPDATE, _TRANSFORM = 0, 1, 2

_int, _i64, _ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
#: ``name: (argtypes, restype)`` of every exported function.
SIGNATURES: dict[str, tuple[list, object]] = {
    "lf_cuda_device_count": ([], _int),
    "lf_cuda_error_string": ([_int], ctypes.c_char_p),
    "lf_reorth_max_block": ([], _int),
    "lf_reorth_plan": (
        [_int, _int, _int, _i64, _i64, _i64, _int, _int, ctypes.POINTER(_i64)],
        _int,
    ),
    "lf_reorth_workspace_size": (
        [_int, _int, _int, _i64, _i64, _i64, _int, _int, ctypes.POINTER(_i64)],
        _int,
    ),
    "lf_reorth_project": (
        [_int, _int, _ptr, _ptr, _ptr, _i64, _i64, _i64, _ptr, _i64, _int, _ptr],
        _int,
    ),
    "lf_reorth_update": (
        [_int, _int, _ptr, _ptr, _ptr, _int, _ptr, _i64, _i64, _i64, _ptr, _i64, _int, _ptr],
        _int,
    ),
    "lf_reorth_transform": (
        [_int, _ptr, _ptr, _int, _ptr, _i64, _i64, _ptr, _i64, _int, _ptr],
        _int,
    ),
}


def load_library(path: str | os.PathLike[str]) -> ctypes.CDLL:
    """Load a kernel library at ``path`` and declare the signatures this module uses."""
    return _library.declare(path, SIGNATURES)


@functools.cache
def library() -> ctypes.CDLL:
    """The installed kernel library (``_build_info.json``'s ``cuda_library``), loaded once."""
    return _library.installed("block_reorth", SIGNATURES)


def max_block(lib: ctypes.CDLL | None = None) -> int:
    """Largest block size ``b`` the kernels handle."""
    return int((lib or library()).lf_reorth_max_block())


#: Fields of :func:`plan`, in the order ``lf_reorth_plan`` writes them.
PLAN_FIELDS = (
    "mc",
    "coef_in_smem",
    "acc_in_smem",
    "nctas",
    "smem",
    "workspace",
    "ntiles",
    "acc_size",
)
_OPS = {"project": _PROJECT, "update": _UPDATE, "transform": _TRANSFORM}


def plan(
    op: str,
    qdtype: torch.dtype,
    wdtype: torch.dtype,
    m: int,
    b: int,
    p: int,
    gram: bool = False,
    device: int = 0,
    lib: ctypes.CDLL | None = None,
) -> dict[str, int]:
    """How the kernels would run ``op`` on these shapes on ``device`` (tests and tuning):
    basis rows per shared-memory chunk, where coefficients and accumulators live, grid
    size, shared memory and workspace bytes."""
    lib = lib or library()
    info = (ctypes.c_int64 * len(PLAN_FIELDS))()
    code = lib.lf_reorth_plan(
        _OPS[op],
        _library.DTYPE_CODES[qdtype],
        _library.DTYPE_CODES[wdtype],
        m,
        b,
        p,
        int(gram),
        device,
        info,
    )
    _library.raise_on_error(lib, code, "block_reorth", "plan query")
    return dict(zip(PLAN_FIELDS, (int(v) for v in info)))


def _empty(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation hook for outputs and workspace (the emulation tests wrap it in canaries)."""
    return torch.empty(numel, dtype=dtype, device=device)


def _check_pair(Q: torch.Tensor, W: torch.Tensor) -> tuple[int, int]:
    if W.dtype not in BASIS_DTYPES or Q.dtype not in BASIS_DTYPES[W.dtype]:
        raise TypeError(
            f"block_reorth (cuda): unsupported dtypes Q={Q.dtype}, W={W.dtype}; a float32 "
            "block takes a float32/bfloat16/float16 basis, a float64 block a float64 basis"
        )
    return _library.DTYPE_CODES[Q.dtype], _library.DTYPE_CODES[W.dtype]


def _check_2d(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2:
        raise ValueError(f"block_reorth (cuda): {name} must be 2-D, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(
            f"block_reorth (cuda): {name} must be contiguous, got strides {t.stride()} "
            f"for shape {tuple(t.shape)}"
        )


def _check_cuda(*tensors: torch.Tensor) -> torch.device:
    device = tensors[-1].device
    for t in tensors:
        if t.device.type != "cuda":
            raise ValueError(f"block_reorth (cuda): expected CUDA tensors, got one on {t.device}")
        if t.device != device:
            raise ValueError(f"block_reorth (cuda): tensors on {t.device} and {device}")
    return device


def _coefficients(
    X: torch.Tensor, shape: tuple[int, int], name: str, device: torch.device
) -> torch.Tensor:
    if tuple(X.shape) != shape:
        raise ValueError(
            f"block_reorth (cuda): {name} must have shape {shape}, got {tuple(X.shape)}"
        )
    return X.to(device=device, dtype=torch.float64).contiguous()


@functools.lru_cache(maxsize=1024)
def _workspace_bytes(
    lib: ctypes.CDLL, op: int, qd: int, wd: int, m: int, b: int, p: int, gram: bool, device: int
) -> int:
    # A pure function of its arguments on a given device (the plan depends on the device's
    # attributes and the kernels' occupancy only), so it is cached.
    nbytes = ctypes.c_int64(0)
    code = lib.lf_reorth_workspace_size(
        op, qd, wd, m, b, p, int(gram), device, ctypes.byref(nbytes)
    )
    _library.raise_on_error(lib, code, "block_reorth", "workspace query")
    return nbytes.value


def _workspace(
    lib: ctypes.CDLL,
    op: int,
    qd: int,
    wd: int,
    m: int,
    b: int,
    p: int,
    gram: bool,
    device: int,
    where: torch.device,
) -> torch.Tensor:
    return _empty(_workspace_bytes(lib, op, qd, wd, m, b, p, gram, device), torch.uint8, where)


# ---- launches with an explicit library, device index and stream (no device checks) ----


def project_with(
    lib: ctypes.CDLL, Q: torch.Tensor, W: torch.Tensor, device: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, n2) = (Q Wᵀ, rowwise ‖W‖²)`` in float64 (see :func:`project`)."""
    _check_2d(Q, "Q")
    _check_2d(W, "W")
    qd, wd = _check_pair(Q, W)
    (m, p), b = Q.shape, W.shape[0]
    if W.shape[1] != p:
        raise ValueError(f"block_reorth (cuda): Q {tuple(Q.shape)} and W {tuple(W.shape)}")
    out = _empty(m * b + b, torch.float64, W.device)
    ws = _workspace(lib, _PROJECT, qd, wd, m, b, p, False, device, W.device)
    code = lib.lf_reorth_project(
        qd,
        wd,
        Q.data_ptr(),
        W.data_ptr(),
        out.data_ptr(),
        m,
        b,
        p,
        ws.data_ptr(),
        ws.numel(),
        device,
        stream,
    )
    _library.raise_on_error(lib, code, "block_reorth", "project")
    return out[: m * b].view(m, b), out[m * b :]


def update_with(
    lib: ctypes.CDLL,
    Q: torch.Tensor,
    W: torch.Tensor,
    C: torch.Tensor,
    gram: bool,
    device: int,
    stream: int,
) -> torch.Tensor:
    """``W -= Cᵀ Q`` in place, then ``Q Wᵀ`` or (``gram``) ``W Wᵀ`` (see :func:`update_`)."""
    _check_2d(Q, "Q")
    _check_2d(W, "W")
    qd, wd = _check_pair(Q, W)
    (m, p), b = Q.shape, W.shape[0]
    if W.shape[1] != p:
        raise ValueError(f"block_reorth (cuda): Q {tuple(Q.shape)} and W {tuple(W.shape)}")
    C = _coefficients(C, (m, b), "C", W.device)
    rows = b if gram else m
    out = _empty(rows * b, torch.float64, W.device)
    ws = _workspace(lib, _UPDATE, qd, wd, m, b, p, gram, device, W.device)
    code = lib.lf_reorth_update(
        qd,
        wd,
        Q.data_ptr(),
        W.data_ptr(),
        C.data_ptr(),
        int(gram),
        out.data_ptr(),
        m,
        b,
        p,
        ws.data_ptr(),
        ws.numel(),
        device,
        stream,
    )
    _library.raise_on_error(lib, code, "block_reorth", "update")
    return out.view(rows, b)


def transform_with(
    lib: ctypes.CDLL, W: torch.Tensor, T: torch.Tensor, gram: bool, device: int, stream: int
) -> torch.Tensor:
    """``W <- T W`` in place and (``gram``) ``W Wᵀ`` (see :func:`transform_`)."""
    _check_2d(W, "W")
    _, wd = _check_pair(W, W)
    b, p = W.shape
    T = _coefficients(T, (b, b), "T", W.device)
    out = _empty(b * b if gram else 0, torch.float64, W.device)
    ws = _workspace(lib, _TRANSFORM, wd, wd, 0, b, p, gram, device, W.device)
    code = lib.lf_reorth_transform(
        wd,
        W.data_ptr(),
        T.data_ptr(),
        int(gram),
        out.data_ptr(),
        b,
        p,
        ws.data_ptr(),
        ws.numel(),
        device,
        stream,
    )
    _library.raise_on_error(lib, code, "block_reorth", "transform")
    return out.view(b, b) if gram else out


# ---- the driver's primitives on CUDA tensors ----


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def project(Q: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``C = Q Wᵀ`` (``m × b``) and ``n2 = rowwise ‖W‖²`` (``b``), float64, on ``W``'s device."""
    device = _check_cuda(Q, W)
    with torch.cuda.device(device):
        return project_with(library(), Q, W, device.index, _stream(device))


def update_(Q: torch.Tensor, W: torch.Tensor, C: torch.Tensor, gram: bool) -> torch.Tensor:
    """``W -= Cᵀ Q`` in place; then ``D = Q Wᵀ`` (``m × b``) or, if ``gram``, ``W Wᵀ``."""
    device = _check_cuda(Q, W)
    with torch.cuda.device(device):
        return update_with(library(), Q, W, C, gram, device.index, _stream(device))


def transform_(W: torch.Tensor, T: torch.Tensor, gram: bool) -> torch.Tensor:
    """``W <- T W`` in place (``T``: ``b × b``); ``W Wᵀ`` if ``gram``, else an empty tensor."""
    device = _check_cuda(W)
    with torch.cuda.device(device):
        return transform_with(library(), W, T, gram, device.index, _stream(device))


def block_reorth_(
    Q: torch.Tensor, W: torch.Tensor, rank_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place ``block_reorth`` on CUDA tensors; returns ``(coeffs, R)`` in float64."""
    if W.shape[0] > max_block():
        raise ValueError(
            f"cuda block_reorth: blocks of at most {max_block()} vectors, got {W.shape[0]}; "
            "use backend='triton' or split the block"
        )
    return cgs2_cholqr2(Q, W, rank_tol, project, update_, transform_)
