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

The :math:`n_v` recurrences run *in lockstep*
(:func:`~landscape_fast.linalg.lanczos.lanczos_lockstep`): at each step the
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

import warnings

import torch

from landscape_fast.linalg.density import SpectralDensity
from landscape_fast.linalg.eigsh import eigsh
from landscape_fast.linalg.lanczos import lanczos_lockstep
from landscape_fast.linalg.probes import check_probe_kind, probe_block
from landscape_fast.linalg.result import EigenResult
from landscape_fast.operators.base import CurvatureOperator


def spectral_density(
    op: CurvatureOperator,
    num_probes: int = 8,
    num_steps: int = 80,
    seed: int = 0,
    *,
    probe: str = "rademacher",
    block_size: int | None = None,
    refine: int | EigenResult = 0,
    refine_tol: float = 1e-6,
    basis_dtype: torch.dtype | None = None,
    reorthogonalize: bool = True,
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
            compute exactly and deflate; the converged ones become point masses. Or an
            already computed :class:`~landscape_fast.EigenResult` of ``op`` (any end, e.g.
            the top eigenpairs of :func:`landscape_fast.analyze`): its converged pairs are
            deflated and its products are not counted again.
        refine_tol: Residual tolerance of the refinement (relative, as in ``eigsh``).
        basis_dtype: Storage dtype of the Lanczos bases (see
            :func:`~landscape_fast.linalg.lanczos.lanczos_lockstep`).
        reorthogonalize: ``True`` (default): full reorthogonalization, ``block_size ·
            num_steps · p`` basis entries. ``False``: against the last two Lanczos vectors
            only, ``2 · block_size · p`` entries, for models whose bases do not fit (a 10⁸-
            parameter model: 8 × 80 × 10⁸ float32 entries are 256 GB); converged outliers then
            come back as ghost copies sharing their weight, and :meth:`outliers` and
            breakdown-exact counts no longer hold (noted in the result).

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
    given = refine if isinstance(refine, EigenResult) else None
    if given is not None:
        refine = len(given.eigenvalues)
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
    if not reorthogonalize:
        notes.append(
            "no full reorthogonalization (last two vectors only): ghost copies of converged "
            "eigenvalues share their weight; outliers() may list duplicates"
        )
    matvecs = 0
    refined = None
    D = None
    point_masses = torch.zeros(0, dtype=torch.float64)
    if given is not None:
        refined = given
        notes.append(f"refine: {refine} eigenpairs given (their products not counted here)")
    elif refine > 0:
        refined = eigsh(op, refine, which="LM", tol=refine_tol, seed=seed)
        matvecs += refined.n_matvecs
    if refined is not None:
        conv = refined.converged.cpu()
        point_masses = refined.eigenvalues.cpu().to(torch.float64)[conv]
        n_un = int((~conv).sum())
        if n_un:
            notes.append(
                f"refine: {n_un} of {refine} eigenpairs did not converge; "
                "they are not deflated (their mass stays in the SLQ part)"
            )
        if int(conv.sum()):
            vecs = refined.eigenvectors[conv.to(refined.eigenvectors.device)]
            D = torch.linalg.qr(vecs.to(torch.float64).T).Q.T.to(op.dtype).contiguous()
        if num_steps > p - point_masses.numel():
            num_steps = p - point_masses.numel()
            notes.append(f"num_steps capped at p - k = {num_steps} (deflated space)")

    bs = num_probes if block_size is None else min(block_size, num_probes)
    nodes = torch.zeros((num_probes, num_steps), dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    resid = torch.zeros_like(nodes)
    steps_t = torch.zeros(num_probes, dtype=torch.int64)
    breakdown = torch.zeros(num_probes, dtype=torch.bool)
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
            reorthogonalize=reorthogonalize,
        )
        matvecs += res.n_matvecs
        for r in range(stop - start):  # Gauss quadrature of each probe: T = U diag(θ) Uᵀ
            l, n = start + r, int(res.steps[r])
            theta, U = torch.linalg.eigh(res.tridiagonal(r))
            nodes[l, :n] = theta
            weights[l, :n] = U[0] ** 2
            resid[l, :n] = res.beta[r, n - 1] * U[n - 1].abs()
            steps_t[l], breakdown[l] = n, res.breakdown[r]
    return SpectralDensity(
        nodes=nodes,
        weights=weights,
        residuals=resid,
        steps=steps_t,
        breakdown=breakdown,
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
