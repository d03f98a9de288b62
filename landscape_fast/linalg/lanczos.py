r"""Lanczos with full reorthogonalization: the raw three-term recurrence.

For a symmetric operator :math:`A` and a start vector :math:`v_0`, Lanczos builds an
orthonormal basis :math:`q_1, \dots, q_n` of the Krylov space
:math:`\mathcal{K}_n(A, v_0)` and the tridiagonal :math:`T_n = Q_n A Q_n^\top`:

.. math::

    \beta_j q_{j+1} = A q_j - \alpha_j q_j - \beta_{j-1} q_{j-1},\qquad
    T_n = \begin{pmatrix} \alpha_1 & \beta_1 & & \\ \beta_1 & \alpha_2 & \ddots & \\
    & \ddots & \ddots & \beta_{n-1} \\ & & \beta_{n-1} & \alpha_n \end{pmatrix}.

In floating point the three-term recurrence loses orthogonality as Ritz values converge
(ghost eigenvalues); here every new vector is orthogonalized against the *whole* basis with
:func:`landscape_fast.ops.block_reorth` (CGS2, "twice is enough"), so the basis stays
orthonormal to working precision and :math:`\alpha_j = \langle q_j, A q_j\rangle`,
:math:`\beta_j = \lVert (I - Q_j^\top Q_j) A q_j \rVert`. Cost: ``n`` operator products and
:math:`O(n^2 p)` for the reorthogonalization. If the Krylov space is exhausted (an
invariant subspace, :math:`\beta_j \approx 0`), the recurrence stops early and says so.

The eigenvalues of :math:`T_n` (Ritz values) approximate the extreme eigenvalues of
:math:`A`; its eigenvectors' first components give the quadrature weights of stochastic
Lanczos quadrature.

Example:
    >>> import torch, landscape_fast as lf
    >>> A = lf.DenseOperator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
    >>> res = lf.lanczos(A, num_steps=10, seed=0)
    >>> torch.linalg.eigvalsh(res.tridiagonal()).round(decimals=8).tolist()[-3:]
    [8.0, 9.0, 10.0]
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.ops.block_reorth import block_reorth


class LanczosResult(NamedTuple):
    """Output of :func:`lanczos`.

    Attributes:
        alpha: ``(n,)`` float64 diagonal of :math:`T_n`.
        beta: ``(n,)`` float64 off-diagonal :math:`\\beta_1..\\beta_{n-1}` followed by the
            final residual norm :math:`\\beta_n` (0 after a breakdown).
        basis: ``(n, p)`` orthonormal Lanczos vectors (rows), or ``None`` unless requested.
        n_matvecs: Operator products spent.
        breakdown: ``True`` if the Krylov space was exhausted (an invariant subspace was
            found, :math:`\\beta_n = 0`): the Ritz values are then exact eigenvalues of ``A``.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    basis: torch.Tensor | None
    n_matvecs: int
    breakdown: bool

    @property
    def num_steps(self) -> int:
        """Steps taken, ``n``."""
        return self.alpha.shape[0]

    def tridiagonal(self) -> torch.Tensor:
        """The ``n × n`` float64 tridiagonal matrix :math:`T_n` (on the CPU)."""
        off = self.beta[: self.num_steps - 1].cpu()
        return torch.diag(self.alpha.cpu()) + torch.diag(off, 1) + torch.diag(off, -1)


def lanczos(
    op: CurvatureOperator,
    num_steps: int,
    v0: torch.Tensor | None = None,
    *,
    seed: int = 0,
    return_basis: bool = False,
    basis_dtype: torch.dtype | None = None,
    rank_tol: float | None = None,
) -> LanczosResult:
    """Run ``num_steps`` Lanczos steps with full reorthogonalization.

    Args:
        op: Symmetric operator (``shape``, ``dtype``, ``device``, ``matmat``).
        num_steps: Number of steps ``n`` (at most ``p``; larger values are clipped).
        v0: ``(p,)`` start vector (any nonzero scale); default a Rademacher vector drawn
            from ``seed``.
        seed: Seed of the default start vector.
        return_basis: Keep and return the ``(n, p)`` basis.
        basis_dtype: Storage dtype of the basis (default ``op.dtype``); a float32 operator
            may keep it in bfloat16/float16 to halve its memory (arithmetic stays float32).
        rank_tol: Relative threshold of :func:`~landscape_fast.ops.block_reorth` below which
            the new direction counts as exhausted (default: its dtype default).

    Returns:
        :class:`LanczosResult`.

    Raises:
        ValueError: For ``num_steps < 1``, a ``v0`` of the wrong shape, or a zero ``v0``.
    """
    p = op.shape[0]
    if num_steps < 1:
        raise ValueError(f"lanczos: num_steps must be >= 1, got {num_steps}")
    n_max = min(int(num_steps), p)
    if v0 is None:
        gen = torch.Generator().manual_seed(seed)
        v0 = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(op.dtype)
    if v0.shape != (p,):
        raise ValueError(f"lanczos: v0 must have shape ({p},), got {tuple(v0.shape)}")
    v0 = v0.to(device=op.device, dtype=op.dtype)
    norm = torch.linalg.vector_norm(v0)
    if not norm > 0:
        raise ValueError("lanczos: v0 is zero (or not finite); pass a nonzero start vector")

    Q = torch.empty((n_max, p), dtype=basis_dtype or op.dtype, device=op.device)
    Q[0] = v0 / norm
    alpha = torch.zeros(n_max, dtype=torch.float64)
    beta = torch.zeros(n_max, dtype=torch.float64)
    n, breakdown, matvecs = 0, False, 0
    for j in range(n_max):
        w = op.matmat(Q[j : j + 1].to(op.dtype))
        matvecs += 1
        out = block_reorth(Q[: j + 1], w.contiguous(), inplace=True, rank_tol=rank_tol)
        alpha[j] = out.coeffs[j, 0].item()
        beta[j] = out.R[0, 0].item()
        n = j + 1
        if out.deficient[0]:  # invariant subspace: A q_j lies in span(Q)
            breakdown = True
            break
        if n < n_max:
            Q[n] = out.W[0]
    return LanczosResult(
        alpha=alpha[:n],
        beta=beta[:n],
        basis=Q[:n] if return_basis else None,
        n_matvecs=matvecs,
        breakdown=breakdown,
    )
