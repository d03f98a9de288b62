"""Helpers for testing landscape_fast and code built on it: tolerances and comparisons.

Example:
    >>> import torch
    >>> from landscape_fast.testing import assert_close, random_orthonormal_rows
    >>> Q = random_orthonormal_rows(3, 10, torch.float64)
    >>> assert_close(Q @ Q.T, torch.eye(3, dtype=torch.float64), torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from landscape_fast.operators.dense import DenseOperator
from landscape_fast.ops.block_reorth import BASIS_DTYPES

#: Every ``(block dtype, basis dtype)`` pair ``block_reorth`` supports, and short test ids.
REORTH_DTYPE_PAIRS: list[tuple[torch.dtype, torch.dtype]] = [
    (w, q) for w, qs in BASIS_DTYPES.items() for q in qs
]
_SHORT = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
REORTH_DTYPE_IDS: list[str] = [
    _SHORT[w] if w == q else f"{_SHORT[w]}-{_SHORT[q]}" for w, q in REORTH_DTYPE_PAIRS
]
#: ``dtype -> (atol, rtol)`` for results computed in that dtype compared with a float64
#: oracle, on well-conditioned inputs of unit scale. Loosen per test only with a comment
#: giving the measured error.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype,
    *,
    scale: float = 1.0,
    what: str = "",
) -> None:
    """Assert ``|actual - expected| <= scale * (atol + rtol |expected|)`` elementwise.

    The tolerance comes from :data:`TOLERANCES` for ``dtype`` (the precision the result
    was computed in). On failure the message gives the worst element and its error.
    """
    atol, rtol = TOLERANCES[dtype]
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if a.numel() == 0:
        return
    err = (a - e).abs()
    bound = scale * (atol + rtol * e.abs())
    bad = err > bound
    if bad.any() or not torch.isfinite(a).all():
        idx = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements exceed the {dtype} tolerance "
            f"(x{scale}); worst at flat index {idx}: actual {a.flatten()[idx]:.6e}, expected "
            f"{e.flatten()[idx]:.6e}, error {err.flatten()[idx]:.3e} > {bound.flatten()[idx]:.3e}"
        )


def random_orthonormal_rows(
    m: int, p: int, dtype: torch.dtype = torch.float64, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(m, p)`` matrix with orthonormal rows (computed in float64, then cast)."""
    if m == 0:
        return torch.zeros((0, p), dtype=dtype)
    A = torch.randn(p, m, dtype=torch.float64, generator=generator)
    return torch.linalg.qr(A)[0].T.contiguous().to(dtype)


def operator_with_spectrum(
    eigenvalues: Sequence[float] | torch.Tensor,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[DenseOperator, torch.Tensor]:
    """A :class:`DenseOperator` with the given spectrum in a random orthonormal basis.

    Returns:
        ``(operator, A)`` with ``A`` the float64 matrix ``Uᵀ diag(λ) U``.
    """
    eigs = torch.as_tensor(eigenvalues, dtype=torch.float64)
    U = random_orthonormal_rows(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed))
    A = (U.T * eigs) @ U
    A = (A + A.T) / 2
    return DenseOperator(A.to(dtype)), A
