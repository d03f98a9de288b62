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

import math
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
    sym_tol: float | None = None,
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
        sym_tol: Relative tolerance of the symmetry check (see :func:`lanczos_lockstep`).

    Returns:
        :class:`LanczosResult`.

    Raises:
        ValueError: For ``num_steps < 1``, a ``v0`` of the wrong shape, a zero ``v0``, or an
            operator that is not symmetric.
        FloatingPointError: If a product is not finite.
    """
    p = op.shape[0]
    if v0 is None:
        gen = torch.Generator().manual_seed(seed)
        v0 = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(op.dtype)
    if v0.shape != (p,):
        raise ValueError(f"lanczos: v0 must have shape ({p},), got {tuple(v0.shape)}")
    if not torch.linalg.vector_norm(v0.double()) > 0:
        raise ValueError("lanczos: v0 is zero (or not finite); pass a nonzero start vector")
    res = lanczos_lockstep(
        op, v0[None], num_steps, basis_dtype=basis_dtype, sym_tol=sym_tol, rank_tol=rank_tol,
        caller="lanczos", return_basis=return_basis,
    )  # fmt: skip
    n = int(res.steps[0])
    return LanczosResult(
        alpha=res.alpha[0, :n],
        beta=res.beta[0, :n],
        basis=res.basis[0, :n] if return_basis else None,
        n_matvecs=res.n_matvecs,
        breakdown=bool(res.breakdown[0]),
    )


#: Default relative symmetry tolerance of :func:`lanczos_lockstep`, by operator dtype
#: (float32 Hessians from autograd are symmetric only to rounding; a bfloat16/float16 basis
#: adds its storage rounding, about 4e-3 relative, to the coefficients checked).
DEFAULT_SYM_TOL: dict[torch.dtype, float] = {torch.float64: 1e-6, torch.float32: 1e-2}


class LockstepResult(NamedTuple):
    """Output of :func:`lanczos_lockstep`.

    Attributes:
        alpha: ``(b, m)`` float64 diagonals of the probes' :math:`T` (padded with 0).
        beta: ``(b, m)`` float64: ``beta[l, :steps[l]-1]`` is the off-diagonal of
            :math:`T_l` and ``beta[l, steps[l]-1]`` the final residual norm (0 after a
            breakdown); padded with 0.
        steps: ``(b,)`` int64 number of valid steps per probe.
        breakdown: ``(b,)`` bool: the probe's Krylov space was exhausted, its :math:`T` is exact.
        n_matvecs: Operator products spent (sum of ``steps``).
        start_norms: ``(b,)`` float64 norms of the start vectors after deflation (before
            normalisation).
        basis: ``(b, m, p)`` Lanczos vectors (rows ``:steps[l]`` valid), or ``None`` unless
            requested.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    steps: torch.Tensor
    breakdown: torch.Tensor
    n_matvecs: int
    start_norms: torch.Tensor
    basis: torch.Tensor | None = None

    def tridiagonal(self, probe: int) -> torch.Tensor:
        """The ``n × n`` float64 tridiagonal matrix :math:`T` of one probe (on the CPU)."""
        n = int(self.steps[probe])
        a = self.alpha[probe, :n]
        off = self.beta[probe, : n - 1]
        return torch.diag(a) + torch.diag(off, 1) + torch.diag(off, -1)


def project_out(W: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``W (I - DᵀD)`` applied twice (CGS2, "twice is enough") for orthonormal rows ``D``."""
    if D.shape[0] == 0:
        return W
    for _ in range(2):
        W = W - (W @ D.T) @ D
    return W


def lanczos_lockstep(
    op: CurvatureOperator,
    V0: torch.Tensor,
    num_steps: int,
    *,
    deflate: torch.Tensor | None = None,
    basis_dtype: torch.dtype | None = None,
    sym_tol: float | None = None,
    rank_tol: float | None = None,
    probe_offset: int = 0,
    caller: str = "lanczos_lockstep",
    return_basis: bool = False,
    reorthogonalize: bool = True,
) -> LockstepResult:
    r"""Run ``b = V0.shape[0]`` independent Lanczos recurrences in lockstep.

    At step :math:`j` the current vectors :math:`q_j^{(l)}` of all still-active probes are
    multiplied as one block, ``op.matmat(block)``; each product is then orthogonalized
    (CGS2) against the deflation rows and against *its own* basis
    :math:`q_1^{(l)}, \dots, q_j^{(l)}` only, giving

    .. math::

        \alpha_j^{(l)} = \langle q_j^{(l)}, H q_j^{(l)}\rangle,\qquad
        \beta_j^{(l)} = \lVert (I - Q^{(l)\top} Q^{(l)})(I - D^\top D) H q_j^{(l)}\rVert .

    Per probe this is exactly :func:`~landscape_fast.linalg.lanczos.lanczos` (same
    coefficients up to rounding); the block only shares the operator passes. A probe whose
    Krylov space is exhausted (the new vector is deficient in
    :func:`~landscape_fast.ops.block_reorth`) stops and leaves the block; its :math:`T` is
    exact.

    Symmetry check: with full reorthogonalization the coefficients of :math:`H q_j` against
    :math:`q_i` must vanish for :math:`i < j - 1` and equal :math:`\beta_{j-1}` for
    :math:`i = j - 1`. A deviation above ``sym_tol`` times
    :math:`\max(|\alpha_j| + \beta_j + \beta_{j-1},\ \max_{i \le j} |\alpha_i| + \beta_i)`
    (the local scale, or the estimate of :math:`\lVert H\rVert` so far) raises.

    Memory: the bases take ``b · num_steps · p`` entries of ``basis_dtype``; use a smaller
    block (several calls) or a bfloat16 basis for huge ``p``, or ``reorthogonalize=False``:
    each new vector is then orthogonalized against the last two only (the three-term
    recurrence, run as CGS2), ``2 · b · p`` entries. Orthogonality is then lost as Ritz
    values converge, and converged eigenvalues reappear as "ghost" copies that share their
    quadrature weight; the spectral density stays usable (Papyan 2020 runs SLQ this way),
    but counts of the outliers and breakdown detection are not exact any more.

    Args:
        op: Symmetric operator.
        V0: ``(b, p)`` start vectors (any nonzero scale; normalised after deflation).
        num_steps: Steps per probe (clipped to ``p``).
        deflate: ``(k, p)`` orthonormal rows kept out of every basis (start vectors and new
            vectors are projected on their orthogonal complement).
        basis_dtype: Storage dtype of the bases (default ``op.dtype``; a float32 operator may
            use bfloat16/float16).
        sym_tol: Relative symmetry tolerance (default :data:`DEFAULT_SYM_TOL` of
            ``op.dtype``; ``math.inf`` disables the check).
        rank_tol: Deficiency threshold passed to :func:`~landscape_fast.ops.block_reorth`.
        probe_offset: Added to the probe index in error messages (for callers running
            probes in several blocks).
        caller: Name used at the start of error messages.
        return_basis: Keep and return the ``(b, m, p)`` bases (full reorthogonalization
            only).
        reorthogonalize: Full reorthogonalization against the whole basis (default) or,
            with ``False``, against the last two vectors only (memory ``2 · b · p``).

    Returns:
        :class:`LockstepResult`.

    Raises:
        ValueError: For bad shapes, a start vector that is zero after deflation, or a
            non-symmetric operator.
        FloatingPointError: If an operator product is not finite (names probe and step).
    """
    p = op.shape[0]
    if V0.dim() != 2 or V0.shape[1] != p or V0.shape[0] < 1:
        raise ValueError(
            f"{caller}: V0 must have shape (b, {p}) with b >= 1, got {tuple(V0.shape)}"
        )
    if num_steps < 1:
        raise ValueError(f"{caller}: num_steps must be >= 1, got {num_steps}")
    b = V0.shape[0]
    m = min(int(num_steps), p)
    dtype, device = op.dtype, op.device
    tol = DEFAULT_SYM_TOL.get(dtype, 1e-2) if sym_tol is None else float(sym_tol)
    D = None
    if deflate is not None and deflate.shape[0] > 0:
        if deflate.dim() != 2 or deflate.shape[1] != p:
            raise ValueError(f"{caller}: deflate must be (k, {p}), got {tuple(deflate.shape)}")
        D = deflate.to(dtype=dtype, device=device)
        m = min(m, p - D.shape[0])
        if m < 1:
            raise ValueError(f"{caller}: deflating {D.shape[0]} vectors leaves no space (p={p})")

    V = V0.detach().to(dtype=dtype, device=device)
    if D is not None:
        V = project_out(V, D)
    norms = torch.linalg.vector_norm(V, dim=1)
    bad = ~(norms > 0) | ~torch.isfinite(norms)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0]) + probe_offset
        raise ValueError(
            f"{caller}: start vector of probe {i} is zero or not finite"
            + (" after deflation" if D is not None else "")
        )
    if return_basis and not reorthogonalize:
        raise ValueError(f"{caller}: return_basis needs reorthogonalize=True (no basis is kept)")
    slots = m if reorthogonalize else min(m, 2)  # local: a ring of the last two vectors
    Q = torch.empty((b, slots, p), dtype=basis_dtype or dtype, device=device)
    Q[:, 0] = V / norms[:, None]

    alpha = torch.zeros((b, m), dtype=torch.float64)
    beta = torch.zeros((b, m), dtype=torch.float64)
    steps = torch.zeros(b, dtype=torch.int64)
    breakdown = torch.zeros(b, dtype=torch.bool)
    seen = [0.0] * b  # per probe: the largest |α_j| + β_j so far (an estimate of ‖H‖)
    active = list(range(b))
    matvecs = 0
    for j in range(m):
        if not active:
            break
        idx = torch.tensor(active, device=device)
        W = op.matmat(Q[:, j % slots].index_select(0, idx).to(dtype).contiguous())
        matvecs += len(active)
        finite = torch.isfinite(W).all(dim=1).cpu()
        if not bool(finite.all()):
            l_bad = active[int(torch.nonzero(~finite)[0, 0])] + probe_offset
            raise FloatingPointError(
                f"{caller}: the operator product of probe {l_bad} at Lanczos step {j + 1} is "
                "not finite (nan/inf); the operator itself produced it (check the model's loss "
                "at these parameters, or the operator's inputs)"
            )
        if D is not None:
            W = project_out(W, D)
        W = W.contiguous()
        coefs, norms_j, defic = [], [], []
        window = torch.arange(max(0, j + 1 - slots), j + 1, device=device) % slots
        w = window.numel()  # basis rows orthogonalized against: q_{j-w+1} .. q_j
        for r, l in enumerate(active):
            basis = Q[l, : j + 1] if reorthogonalize else Q[l].index_select(0, window)
            out = block_reorth(basis, W[r : r + 1], inplace=True, rank_tol=rank_tol)
            coefs.append(out.coeffs[:, 0])
            norms_j.append(out.R[0, 0])
            defic.append(out.deficient[0])
            if j + 1 < m and not bool(out.deficient[0]):
                Q[l, (j + 1) % slots] = out.W[0]
        C = torch.stack(coefs).cpu()  # (a, w) float64
        Rn = torch.stack(norms_j).cpu()
        Df = torch.stack(defic).cpu()
        still = []
        for r, l in enumerate(active):
            a_j, b_j = float(C[r, w - 1]), float(Rn[r])
            alpha[l, j], beta[l, j] = a_j, b_j
            steps[l] = j + 1
            seen[l] = max(seen[l], abs(a_j) + b_j)
            if j >= 1 and math.isfinite(tol):
                b_prev = float(beta[l, j - 1])
                dev = abs(float(C[r, w - 2]) - b_prev)
                if w >= 3:
                    dev = max(dev, float(C[r, : w - 2].abs().max()))
                # The rounding of H q is relative to ‖H‖ (estimated by the largest |α| + β so
                # far), not to this step's coefficients, which are tiny once the Krylov space
                # nears exhaustion or reaches the null space.
                scale = max(abs(a_j) + b_j + b_prev, seen[l])
                if dev > tol * scale:
                    raise ValueError(
                        f"{caller}: the operator is not symmetric: at Lanczos step {j + 1} of "
                        f"probe {l + probe_offset} the coefficients of H q_j against earlier "
                        f"Lanczos vectors deviate by {dev:.3e} from the symmetric three-term "
                        f"recurrence (allowed {tol:.1e} x {scale:.3e}); curvature solvers "
                        "need a symmetric operator (pass sym_tol to loosen the check for "
                        "low-precision operators)"
                    )
            if bool(Df[r]):
                breakdown[l] = True
            else:
                still.append(l)
        active = still
    return LockstepResult(
        alpha, beta, steps, breakdown, matvecs, norms.double().cpu(), Q if return_basis else None
    )
