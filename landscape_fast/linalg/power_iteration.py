r"""Power iteration with deflation, as PyHessian computes its top eigenvalues.

For each of the ``k`` requested eigenpairs, starting from a random vector:

.. math::

    v \leftarrow \frac{v - V_{found}^\top V_{found} v}{\lVert\cdot\rVert},\qquad
    \lambda_t = \langle v, A v\rangle,\qquad v \leftarrow \frac{A v}{\lVert A v\rVert},

stopping when :math:`|\lambda_t - \lambda_{t-1}| / (|\lambda_{t-1}| + 10^{-6}) < \text{tol}`
or after ``max_iter`` products (PyHessian's rule and defaults: ``tol=1e-3``,
``max_iter=100``). It converges to the eigenvalues of largest *magnitude*, at a rate set by
the ratio of consecutive magnitudes, and its relative-change rule can stop long before the
eigenpair is accurate. This implementation exists as a baseline and for parity with
published PyHessian numbers; unlike PyHessian it reports the true residual
:math:`\lVert A v - \lambda v\rVert` of every returned pair and flags ``converged`` only when
that residual is below ``residual_tol`` times the spectral scale.

Example:
    >>> import torch, landscape_fast as lf
    >>> A = lf.DenseOperator(torch.diag(torch.tensor([5.0, 1.0, 0.5], dtype=torch.float64)))
    >>> r = lf.power_iteration(A, k=1, tol=1e-12, max_iter=200)
    >>> round(r.eigenvalues[0].item(), 8), bool(r.converged[0])
    (5.0, True)
"""

from __future__ import annotations

import torch

from landscape_fast.linalg.result import EigenResult
from landscape_fast.operators.base import CurvatureOperator


def power_iteration(
    op: CurvatureOperator,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    residual_tol: float = 1e-3,
    seed: int = 0,
) -> EigenResult:
    """Top-``k`` eigenpairs by magnitude through power iteration with deflation.

    Args:
        op: Symmetric operator.
        k: Number of eigenpairs (found one after another).
        max_iter: Products per eigenpair at most.
        tol: PyHessian's relative-change stopping rule.
        residual_tol: ``converged[i]`` means ``‖A v_i − λ_i v_i‖ ≤ residual_tol · max_j |λ_j|``.
        seed: Seed of the random start vectors.

    Returns:
        :class:`EigenResult`; ``history`` holds, per eigenpair, the eigenvalue estimate
        after every product.

    Raises:
        ValueError: If ``k`` is not in ``[1, p]`` or ``max_iter < 1``.
    """
    p = op.shape[0]
    if not 1 <= k <= p:
        raise ValueError(f"power_iteration: k must be in [1, {p}], got {k}")
    if max_iter < 1:
        raise ValueError(f"power_iteration: max_iter must be >= 1, got {max_iter}")
    gen = torch.Generator().manual_seed(seed)
    found: list[torch.Tensor] = []
    values, residuals, history = [], [], []
    matvecs = 0
    for _ in range(k):
        v = torch.randn(p, generator=gen, dtype=torch.float64).to(op.dtype).to(op.device)
        estimates: list[float] = []
        for _ in range(max_iter):
            for u in found:  # deflation: one Gram-Schmidt sweep, as PyHessian does
                v = v - (u @ v) * u
            v = v / torch.linalg.vector_norm(v)
            Av = op.matmat(v)
            matvecs += 1
            lam = float(v @ Av)
            estimates.append(lam)
            residual = float(torch.linalg.vector_norm(Av - lam * v))
            pair = v  # the vector that lam and residual describe
            done = (
                len(estimates) > 1 and abs(lam - estimates[-2]) / (abs(estimates[-2]) + 1e-6) < tol
            )
            if done:
                break
            v_next = Av / torch.linalg.vector_norm(Av)
            if not torch.isfinite(v_next).all():  # A v = 0: v is an eigenvector for 0
                break
            v = v_next
        found.append(pair)
        values.append(lam)
        residuals.append(residual)
        history.append(estimates)
    vals = torch.tensor(values, dtype=torch.float64)
    res = torch.tensor(residuals, dtype=torch.float64)
    scale = vals.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return EigenResult(
        eigenvalues=vals,
        eigenvectors=torch.stack(found),
        residuals=res,
        converged=res <= residual_tol * scale,
        n_matvecs=matvecs,
        history=history,
    )
