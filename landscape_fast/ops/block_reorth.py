r"""``block_reorth``: orthonormalize a block of vectors against an orthonormal basis.

Every Krylov eigensolver in landscape_fast spends its non-HVP time here: after each
operator application the new block must be made orthogonal to the whole stored basis
(full reorthogonalization) and orthonormal within itself.

Given an orthonormal basis :math:`Q \in \mathbb{R}^{m \times p}` (rows) and a block
:math:`W \in \mathbb{R}^{b \times p}` (rows), the op computes

.. math::

    C_1 = Q W^\top,\quad W' = W - C_1^\top Q,\quad
    C_2 = Q W'^\top,\quad W'' = W' - C_2^\top Q \qquad \text{(CGS2, "twice is enough")}

and then the QR factorization of the block, :math:`W''^\top = W_{out}^\top R` with
:math:`R` upper triangular and :math:`R_{kk} \ge 0`, so that

.. math::

    W = C^\top Q + R^\top W_{out},\qquad C = C_1 + C_2,\qquad
    Q W_{out}^\top \approx 0,\qquad W_{out} W_{out}^\top \approx I .

:math:`C` (``m × b``) holds the projection coefficients a (block) Lanczos recurrence needs
(its last rows correct the diagonal block) and :math:`R` (``b × b``) the new off-diagonal
block. A vector whose norm after projection falls to ``rank_tol`` times its input norm
or below is *deficient* (numerically in the span of ``Q`` and its block predecessors):
its output row is zero and :math:`R_{kk} = 0`; :attr:`ReorthResult.deficient` flags it so a
solver can replace it (invariant subspace, exhausted Krylov space).

The basis may be stored in lower precision than the block (float32 block with a bfloat16
or float16 basis): it is read as stored and all arithmetic accumulates in float32 or
better, which halves the bytes streamed for the dominant operand.

Backends (see :mod:`landscape_fast._backend`): ``reference`` (pure PyTorch, the oracle),
``cpp`` (fused C++/OpenMP kernel: three passes over ``Q`` instead of four), ``triton`` and
``cuda`` (GPU). All return the same result up to rounding.

Example:
    >>> import torch
    >>> from landscape_fast.ops import block_reorth
    >>> Q = torch.linalg.qr(torch.randn(100, 8, dtype=torch.float64))[0].T.contiguous()
    >>> W = torch.randn(3, 100, dtype=torch.float64)
    >>> out = block_reorth(Q, W, backend="reference")
    >>> bool((Q @ out.W.T).abs().max() < 1e-12)
    True
    >>> torch.allclose(out.coeffs.T @ Q + out.R.T @ out.W, W)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from landscape_fast import _backend

#: Block dtypes every backend accepts, and the basis dtypes allowed for each.
BASIS_DTYPES: dict[torch.dtype, tuple[torch.dtype, ...]] = {
    torch.float64: (torch.float64,),
    torch.float32: (torch.float32, torch.bfloat16, torch.float16),
}

#: Default relative threshold below which a projected vector counts as deficient.
#: Block kernels normalize through a float64 Gram matrix, which resolves relative norms
#: down to about sqrt(eps64) = 1.5e-8; a float32 vector that lies in span(Q) keeps a
#: residual of about sqrt(m) * eps32 (1e-6 at m = 128).
DEFAULT_RANK_TOL: dict[torch.dtype, float] = {torch.float64: 1e-7, torch.float32: 1e-5}


#: Widest block (rows of ``W``) each backend handles; absent means unlimited.
MAX_BLOCK: dict[str, int] = {"cuda": 64}


class ReorthResult(NamedTuple):
    """Output of :func:`block_reorth`.

    Attributes:
        W: ``(b, p)`` orthonormal block, orthogonal to ``Q`` (zero rows where deficient).
        coeffs: ``(m, b)`` float64 projection coefficients :math:`C = C_1 + C_2`.
        R: ``(b, b)`` float64 upper-triangular factor with :math:`R_{kk} \\ge 0`.
    """

    W: torch.Tensor
    coeffs: torch.Tensor
    R: torch.Tensor

    @property
    def deficient(self) -> torch.Tensor:
        """``(b,)`` bool: vectors that were numerically in the span of ``Q`` and predecessors."""
        return self.R.diagonal() == 0


def default_rank_tol(dtype: torch.dtype) -> float:
    """The default ``rank_tol`` for a block of ``dtype``."""
    return DEFAULT_RANK_TOL[dtype]


def check_inputs(Q: torch.Tensor, W: torch.Tensor) -> None:
    """Raise a clear error unless ``Q`` and ``W`` are valid ``block_reorth`` inputs."""
    for name, t in (("Q", Q), ("W", W)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"block_reorth: {name} must be a torch.Tensor, got {type(t).__name__}")
    if Q.dim() != 2 or W.dim() != 2:
        raise ValueError(
            "block_reorth: Q must be (m, p) and W must be (b, p) (one vector per row); got "
            f"Q.shape={tuple(Q.shape)}, W.shape={tuple(W.shape)}. A single vector v is "
            "passed as v[None, :]."
        )
    if Q.shape[1] != W.shape[1]:
        raise ValueError(
            f"block_reorth: Q and W must have the same number of columns p; got "
            f"Q.shape={tuple(Q.shape)}, W.shape={tuple(W.shape)}"
        )
    if W.shape[1] == 0:
        raise ValueError("block_reorth: vectors of length p = 0 cannot be orthonormalized")
    if Q.device != W.device:
        raise ValueError(
            f"block_reorth: Q is on {Q.device} but W is on {W.device}; move both to one device"
        )
    if W.dtype not in BASIS_DTYPES:
        raise TypeError(
            f"block_reorth: W must be float32 or float64, got {W.dtype}; cast the block with "
            "W.float() (a low-precision *basis* Q is supported, a low-precision block is not)"
        )
    if Q.dtype not in BASIS_DTYPES[W.dtype]:
        allowed = ", ".join(str(d) for d in BASIS_DTYPES[W.dtype])
        raise TypeError(
            f"block_reorth: a {W.dtype} block needs a basis Q of dtype {allowed}; got "
            f"{Q.dtype}. Store the basis in the block's dtype or lower (float32 block with "
            "a bfloat16/float16 basis), never higher."
        )
    for name, t in (("Q", Q), ("W", W)):
        if not t.is_contiguous():
            raise ValueError(
                f"block_reorth: {name} must be contiguous (row-major, one vector per row); "
                f"got strides {t.stride()} for shape {tuple(t.shape)}. Call "
                f"{name}.contiguous() first (a silent copy of a large basis would double its "
                "memory)."
            )
    if W.requires_grad or Q.requires_grad:
        raise ValueError(
            "block_reorth: inputs must not require grad (it is a solver primitive, not "
            "differentiable); pass tensors created under torch.no_grad() or call .detach()"
        )


def _capability_reasons(backend: str, tensors: Sequence[torch.Tensor]) -> list[str]:
    """Why ``backend`` cannot run these (valid) inputs beyond device and availability."""
    limit = MAX_BLOCK.get(backend)
    b = tensors[1].shape[0]
    if limit is not None and b > limit:
        return [f"handles blocks of at most {limit} vectors, got b={b}"]
    return []


def selected_backend(Q: torch.Tensor, W: torch.Tensor, backend: str | None = None) -> str:
    """Name of the backend :func:`block_reorth` would run on these inputs."""
    return _backend.select("block_reorth", (Q, W), backend, _capability_reasons)[0]


def block_reorth(
    Q: torch.Tensor,
    W: torch.Tensor,
    *,
    rank_tol: float | None = None,
    inplace: bool = False,
    backend: str | None = None,
) -> ReorthResult:
    r"""Orthonormalize the rows of ``W`` against the orthonormal rows of ``Q`` (CGS2 + QR).

    Args:
        Q: ``(m, p)`` basis with orthonormal rows, contiguous; ``m`` may be 0. Same dtype as
            ``W``, or bfloat16/float16 when ``W`` is float32.
        W: ``(b, p)`` block, float32 or float64, contiguous, on ``Q``'s device.
        rank_tol: Relative norm below which a projected vector is deficient (default:
            :data:`DEFAULT_RANK_TOL` for ``W.dtype``).
        inplace: Overwrite ``W`` with the result instead of allocating a new block.
        backend: Force ``"reference"``, ``"cpp"``, ``"triton"`` or ``"cuda"`` (default:
            ``LANDSCAPE_FAST_BACKEND`` or automatic selection).

    Returns:
        :class:`ReorthResult` ``(W, coeffs, R)`` with
        :math:`W_{in} = C^\top Q + R^\top W_{out}`.

    Raises:
        TypeError: For unsupported dtypes or non-tensors.
        ValueError: For wrong shapes, mixed devices, non-contiguous inputs or inputs that
            require grad.
        landscape_fast.BackendError: If a forced backend cannot run these inputs.
    """
    check_inputs(Q, W)
    tol = default_rank_tol(W.dtype) if rank_tol is None else float(rank_tol)
    if not tol >= 0.0:
        raise ValueError(f"block_reorth: rank_tol must be >= 0, got {rank_tol}")
    _, impl = _backend.select("block_reorth", (Q, W), backend, _capability_reasons)
    out = W if inplace else W.clone()
    if out.shape[0] == 0:
        empty = torch.zeros((Q.shape[0], 0), dtype=torch.float64, device=W.device)
        return ReorthResult(out, empty, torch.zeros((0, 0), dtype=torch.float64, device=W.device))
    coeffs, R = impl(Q, out, tol)
    return ReorthResult(out, coeffs, R)
