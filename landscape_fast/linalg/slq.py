r"""Stochastic Lanczos quadrature (SLQ): the spectral density of a curvature operator.

For a symmetric :math:`H \in \mathbb{R}^{p\times p}` with eigenpairs :math:`(\lambda_k, u_k)`
and a unit probe :math:`v`, the quadratic form of any function of :math:`H` is an integral
against the probe's spectral measure,

.. math::

    v^\top f(H) v = \sum_k (u_k^\top v)^2 f(\lambda_k) \approx
    \sum_{i=1}^m \tau_i f(\theta_i),\qquad T_m = U\,\mathrm{diag}(\theta)\,U^\top,\quad
    \tau_i = U_{1i}^2 ,

the :math:`m`-point Gauss quadrature of that measure, read off the Lanczos tridiagonal
:math:`T_m` started at :math:`v` (exact for polynomials of degree :math:`\le 2m - 1`).
Averaging over :math:`n_v` random normalised probes (Ubaru, Chen & Saad 2017; Ghorbani,
Krishnan & Xiao 2019) estimates the spectral density and every spectral sum:

.. math::

    \operatorname{tr} f(H) \approx \frac{p}{n_v}\sum_{l=1}^{n_v}\sum_{i=1}^m
    \tau_i^{(l)} f(\theta_i^{(l)}) .

The :math:`n_v` recurrences run *in lockstep* (:func:`lanczos_lockstep`): at each step the
current vectors of all probes go through the operator as one block (one pass over the data
for a model's Hessian), and each probe's new vector is reorthogonalized against its own
basis with :func:`~landscape_fast.ops.block_reorth` (full reorthogonalization, no ghost
eigenvalues). With ``refine=k`` the top-``k`` eigenpairs (by magnitude) are computed with
:func:`~landscape_fast.linalg.eigsh.eigsh`, enter the density as exact point masses
:math:`1/p` each, and SLQ runs on their orthogonal complement (outliers are then exact and
do not steal quadrature nodes from the bulk). The result is a
:class:`~landscape_fast.linalg.density.SpectralDensity`.

Example:
    >>> import torch, landscape_fast as lf
    >>> from landscape_fast.linalg.slq import spectral_density
    >>> H = lf.DenseOperator(torch.diag(torch.tensor([-1.0, 0, 0, 0, 2, 2, 3, 5],
    ...                                              dtype=torch.float64)))
    >>> d = spectral_density(H, num_probes=4, num_steps=6, seed=0)
    >>> round(d.count(1.5, 10).value, 8), round(d.moment(1).value, 8), round(d.rank().value, 8)
    (4.0, 11.0, 5.0)
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from landscape_fast.linalg.density import SpectralDensity
from landscape_fast.linalg.eigsh import eigsh
from landscape_fast.linalg.probes import check_probe_kind, probe_block
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.ops.block_reorth import block_reorth

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
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    steps: torch.Tensor
    breakdown: torch.Tensor
    n_matvecs: int
    start_norms: torch.Tensor

    def tridiagonal(self, probe: int) -> torch.Tensor:
        """The ``n × n`` float64 tridiagonal matrix :math:`T` of one probe (on the CPU)."""
        n = int(self.steps[probe])
        a = self.alpha[probe, :n]
        off = self.beta[probe, : n - 1]
        return torch.diag(a) + torch.diag(off, 1) + torch.diag(off, -1)


def _project_out(W: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``W (I - DᵀD)`` applied twice (CGS2) for orthonormal rows ``D``."""
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
    :math:`i = j - 1`. A deviation above
    ``sym_tol`` :math:`\cdot (|\alpha_j| + \beta_j + \beta_{j-1})` raises.

    Memory: the bases take ``b · num_steps · p`` entries of ``basis_dtype``; use a smaller
    block (several calls) or a bfloat16 basis for huge ``p``.

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
        V = _project_out(V, D)
    norms = torch.linalg.vector_norm(V, dim=1)
    bad = ~(norms > 0) | ~torch.isfinite(norms)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0]) + probe_offset
        raise ValueError(
            f"{caller}: start vector of probe {i} is zero or not finite"
            + (" after deflation" if D is not None else "")
        )
    Q = torch.empty((b, m, p), dtype=basis_dtype or dtype, device=device)
    Q[:, 0] = V / norms[:, None]

    alpha = torch.zeros((b, m), dtype=torch.float64)
    beta = torch.zeros((b, m), dtype=torch.float64)
    steps = torch.zeros(b, dtype=torch.int64)
    breakdown = torch.zeros(b, dtype=torch.bool)
    active = list(range(b))
    matvecs = 0
    for j in range(m):
        if not active:
            break
        idx = torch.tensor(active, device=device)
        W = op.matmat(Q[:, j].index_select(0, idx).to(dtype).contiguous())
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
            W = _project_out(W, D)
        W = W.contiguous()
        coefs, norms_j, defic = [], [], []
        for r, l in enumerate(active):
            out = block_reorth(Q[l, : j + 1], W[r : r + 1], inplace=True, rank_tol=rank_tol)
            coefs.append(out.coeffs[:, 0])
            norms_j.append(out.R[0, 0])
            defic.append(out.deficient[0])
            if j + 1 < m and not bool(out.deficient[0]):
                Q[l, j + 1] = out.W[0]
        C = torch.stack(coefs).cpu()  # (a, j+1) float64
        Rn = torch.stack(norms_j).cpu()
        Df = torch.stack(defic).cpu()
        still = []
        for r, l in enumerate(active):
            a_j, b_j = float(C[r, j]), float(Rn[r])
            alpha[l, j], beta[l, j] = a_j, b_j
            steps[l] = j + 1
            if j >= 1 and math.isfinite(tol):
                b_prev = float(beta[l, j - 1])
                dev = abs(float(C[r, j - 1]) - b_prev)
                if j >= 2:
                    dev = max(dev, float(C[r, : j - 1].abs().max()))
                scale = abs(a_j) + b_j + b_prev
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
    return LockstepResult(alpha, beta, steps, breakdown, matvecs, norms.double().cpu())


def spectral_density(
    op: CurvatureOperator,
    num_probes: int = 8,
    num_steps: int = 80,
    seed: int = 0,
    *,
    probe: str = "rademacher",
    block_size: int | None = None,
    refine: int = 0,
    refine_tol: float = 1e-6,
    basis_dtype: torch.dtype | None = None,
) -> SpectralDensity:
    r"""Spectral density of a symmetric operator by stochastic Lanczos quadrature.

    For each probe :math:`l` (normalised; projected on the complement of the refined
    eigenvectors when ``refine > 0``), :math:`m` Lanczos steps give
    :math:`T_l = U\,\mathrm{diag}(\theta)\,U^\top`, nodes :math:`\theta_{l,i}`, weights
    :math:`\tau_{l,i} = U_{1i}^2` (summing to 1) and Ritz residual bounds
    :math:`\beta_m |U_{m,i}|` (0 after a breakdown). See
    :class:`~landscape_fast.linalg.density.SpectralDensity` for what to do with them.

    Args:
        op: Symmetric operator.
        num_probes: Number of probes :math:`n_v` (at least 1; at least 2 for standard errors).
        num_steps: Lanczos steps per probe :math:`m` (clipped to ``p`` with a warning).
            Gauss quadrature with :math:`m` nodes is exact for polynomials of degree
            :math:`\le 2m-1`; a smooth density needs a few tens of steps.
        seed: Seed of the probes (stream ``"slq"`` of
            :func:`~landscape_fast.linalg.probes.probe_block`) and of the refinement.
        probe: ``"rademacher"`` or ``"gaussian"``.
        block_size: Probes run in lockstep per block (default: all of them, one operator
            pass per step). ``1`` runs them one after another. The numbers do not depend on
            it (up to rounding); the memory (``block_size · m · p`` basis entries) does.
        refine: Number ``k`` of eigenpairs (largest magnitude, ``eigsh(which="LM")``) to
            compute exactly and deflate; the converged ones become point masses.
        refine_tol: Residual tolerance of the refinement (relative, as in ``eigsh``).
        basis_dtype: Storage dtype of the Lanczos bases (see :func:`lanczos_lockstep`).

    Returns:
        :class:`~landscape_fast.linalg.density.SpectralDensity`.

    Raises:
        ValueError: For ``num_probes < 1``, ``num_steps < 1``, a bad ``block_size``, a
            ``refine`` not in ``[0, p)`` or a non-symmetric operator.
        FloatingPointError: If an operator product is not finite.
    """
    p = op.shape[0]
    check_probe_kind(probe)
    if num_probes < 1:
        raise ValueError(f"spectral_density: num_probes must be >= 1, got {num_probes}")
    if num_steps < 1:
        raise ValueError(f"spectral_density: num_steps must be >= 1, got {num_steps}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"spectral_density: block_size must be >= 1 or None, got {block_size}")
    if not 0 <= refine < p:
        raise ValueError(f"spectral_density: refine must be in [0, p={p}), got {refine}")
    notes: list[str] = []
    if num_steps > p:
        warnings.warn(
            f"spectral_density: num_steps={num_steps} exceeds the dimension p={p}; capped at "
            f"{p} (the Krylov space cannot be larger)",
            stacklevel=2,
        )
        notes.append(f"num_steps capped at p={p}")
        num_steps = p
    if num_probes == 1:
        warnings.warn(
            "spectral_density: num_probes=1 gives no standard error; every Estimate from this "
            "density reports stderr nan (use at least 2 probes, typically 8 or more)",
            stacklevel=2,
        )
    matvecs = 0
    refined = None
    D = None
    point_masses = torch.zeros(0, dtype=torch.float64)
    if refine > 0:
        refined = eigsh(op, refine, which="LM", tol=refine_tol, seed=seed)
        matvecs += refined.n_matvecs
        conv = refined.converged.cpu()
        point_masses = refined.eigenvalues.cpu().to(torch.float64)[conv]
        n_un = int((~conv).sum())
        if n_un:
            notes.append(
                f"refine: {n_un} of {refine} eigenpairs did not converge to tol {refine_tol:g}; "
                "they are not deflated (their mass stays in the SLQ part)"
            )
        if int(conv.sum()):
            vecs = refined.eigenvectors[conv.to(refined.eigenvectors.device)]
            D = torch.linalg.qr(vecs.to(torch.float64).T).Q.T.to(op.dtype).contiguous()
        if num_steps > p - point_masses.numel():
            num_steps = p - point_masses.numel()
            notes.append(f"num_steps capped at p - k = {num_steps} (deflated space)")

    bs = num_probes if block_size is None else min(block_size, num_probes)
    alphas, betas, steps, brk = [], [], [], []
    for start in range(0, num_probes, bs):
        stop = min(start + bs, num_probes)
        V0 = probe_block(
            p,
            range(start, stop),
            seed=seed,
            stream="slq",
            kind=probe,
            dtype=op.dtype,
            device=op.device,
        )
        res = lanczos_lockstep(
            op,
            V0,
            num_steps,
            deflate=D,
            basis_dtype=basis_dtype,
            probe_offset=start,
            caller="spectral_density",
        )
        matvecs += res.n_matvecs
        alphas.append(res.alpha)
        betas.append(res.beta)
        steps.append(res.steps)
        brk.append(res.breakdown)
    m = max(a.shape[1] for a in alphas)
    alpha = torch.cat([torch.nn.functional.pad(a, (0, m - a.shape[1])) for a in alphas])
    beta = torch.cat([torch.nn.functional.pad(b_, (0, m - b_.shape[1])) for b_ in betas])
    steps_t = torch.cat(steps)
    nodes = torch.zeros((num_probes, m), dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    resid = torch.zeros_like(nodes)
    for l in range(num_probes):
        n = int(steps_t[l])
        a, off = alpha[l, :n], beta[l, : n - 1]
        T = torch.diag(a) + torch.diag(off, 1) + torch.diag(off, -1)
        theta, U = torch.linalg.eigh(T)
        nodes[l, :n] = theta
        weights[l, :n] = U[0] ** 2
        resid[l, :n] = beta[l, n - 1] * U[n - 1].abs()
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        residuals=resid,
        steps=steps_t,
        breakdown=torch.cat(brk),
        p=p,
        point_masses=point_masses,
        n_matvecs=matvecs,
        num_probes=num_probes,
        num_steps=num_steps,
        seed=seed,
        probe=probe,
        refined=refined,
        notes=tuple(notes),
    )
