r"""The pass structure every compiled ``block_reorth`` kernel shares (C++, Triton, CUDA).

A kernel backend provides three streaming primitives (each one pass over its operands,
accumulating in float32 or better and returning float64 partial sums):

``project(Q, W) -> (C, n2)``
    :math:`C = Q W^\top` (``m × b``) and the squared row norms :math:`n2_k = \lVert w_k\rVert^2`.
``update_(Q, W, C, gram) -> D``
    :math:`W \leftarrow W - C^\top Q` in place, then in the same pass over the tile of ``Q``
    just used, :math:`D = Q W^\top` (``gram=False``) or :math:`D = W W^\top` (``gram=True``).
``transform_(W, T, gram) -> G``
    :math:`W \leftarrow T W` in place (``T`` is ``b × b``) and, if ``gram``, :math:`G = W W^\top`.

With them, CGS2 against ``Q`` costs three passes over the basis instead of the four of
two separate project/subtract sweeps (the update of sweep 1 and the projection of sweep
2 share one read of each basis tile), and the in-block QR is CholeskyQR2 on float64 Gram
matrices (two cheap passes over ``W`` only):

.. math::

    C_1, n = \mathrm{project}(Q, W);\ C_2 = \mathrm{update}(Q, W, C_1);\
    G = \mathrm{update}(Q, W, C_2, \text{gram});\ R_1 = \mathrm{chol}(G);\
    G_2 = \mathrm{transform}(W, R_1^{-\top}, \text{gram});\ R_2 = \mathrm{chol}(G_2);\
    \mathrm{transform}(W, R_2^{-\top}),\ R = R_2 R_1 .

The Cholesky factorizations skip deficient columns exactly as the reference's in-block
Gram–Schmidt does (see :func:`cholesky_skip`), so all backends agree with the reference.

Example:
    >>> import torch
    >>> from landscape_fast.kernels.block_reorth_driver import cholesky_skip
    >>> G = torch.tensor([[4.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # w2 = w1 / 2
    >>> R = cholesky_skip(G, torch.tensor([2.0, 1.0], dtype=torch.float64), 1e-7)
    >>> R.tolist()
    [[2.0, 1.0], [0.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Project = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Update = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]
Transform = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def cholesky_skip(G: torch.Tensor, in_norms: torch.Tensor, rank_tol: float) -> torch.Tensor:
    r"""Upper Cholesky factor of a Gram matrix that skips numerically dependent columns.

    Column :math:`k` is kept when its residual
    :math:`d_k = G_{kk} - \sum_{i<k,\ \text{kept}} R_{ik}^2` exceeds
    :math:`(\text{rank\_tol}\cdot \text{in\_norms}_k)^2` (and 0); otherwise row and column
    :math:`k` of ``R`` stay zero except the coefficients :math:`R_{ik}, i<k`.

    Args:
        G: ``(b, b)`` float64 symmetric positive semi-definite Gram matrix (any device).
        in_norms: ``(b,)`` float64 reference norms for the relative threshold.
        rank_tol: Relative threshold.

    Returns:
        ``(b, b)`` float64 upper-triangular ``R`` (on CPU) with ``G ≈ RᵀR`` on kept columns.
    """
    if G.shape == (1, 1):
        # Single vector: the same decision as below in plain floats (a third of the fixed
        # cost that dominates small single-vector calls).
        g = float(G.item())
        x = rank_tol * float(in_norms.item())
        r = math.sqrt(g) if g > 0 else 0.0
        keep = g > 0 and (r * r > x * x or g > x * x)
        return torch.tensor([[r if keep else 0.0]], dtype=torch.float64)
    G = G.detach().to("cpu", torch.float64)
    thresholds = ((rank_tol * in_norms.detach().to("cpu", torch.float64)) ** 2).tolist()
    L, info = torch.linalg.cholesky_ex(G)
    if info.item() == 0:  # fast path: no column is deficient
        R = L.T.contiguous()
        if all(d > t for d, t in zip((R.diagonal() ** 2).tolist(), thresholds)):
            return R
    g = G.tolist()
    b = len(g)
    r = [[0.0] * b for _ in range(b)]
    kept: list[int] = []
    for k in range(b):
        for pos, i in enumerate(kept):
            s = g[i][k] - sum(r[j][i] * r[j][k] for j in kept[:pos])
            r[i][k] = s / r[i][i]
        d = g[k][k] - sum(r[i][k] ** 2 for i in kept)
        if d > thresholds[k] and d > 0:
            r[k][k] = math.sqrt(d)
            kept.append(k)
    return torch.tensor(r, dtype=torch.float64).reshape(b, b)


def inverse_transpose(R: torch.Tensor) -> torch.Tensor:
    """``T`` with ``T W = R⁻ᵀ W`` on the kept rows (``R_kk > 0``) and zero rows elsewhere."""
    if R.shape == (1, 1):
        r = float(R.item())
        return torch.tensor([[1.0 / r if r > 0 else 0.0]], dtype=R.dtype)
    if R.is_contiguous() and bool((R.diagonal() > 0).all()):
        # Fast path (no deficient column): the same solve as below, without the gathers
        # (saves ~25 us of the ~150 us fixed cost per call that small blocks pay).
        eye = torch.eye(R.shape[0], dtype=R.dtype)
        return torch.linalg.solve_triangular(R.T, eye, upper=False)
    T = torch.zeros_like(R)
    kept = torch.nonzero(R.diagonal() > 0).flatten()
    if kept.numel():
        sub = R[kept][:, kept]
        eye = torch.eye(kept.numel(), dtype=R.dtype)
        T[kept.unsqueeze(1), kept] = torch.linalg.solve_triangular(sub.T, eye, upper=False)
    return T


def cgs2_cholqr2(
    Q: torch.Tensor,
    W: torch.Tensor,
    rank_tol: float,
    project: Project,
    update_: Update,
    transform_: Transform,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``block_reorth`` in place on ``W`` with a backend's three primitives.

    Returns:
        ``(coeffs, R)`` as float64 tensors on ``W``'s device.
    """
    m = Q.shape[0]
    if m > 0:
        C1, n2 = project(Q, W)
        C2 = update_(Q, W, C1, False)
        G = update_(Q, W, C2, True)
        coeffs = C1 + C2
    else:
        G = transform_(W, torch.eye(W.shape[0], dtype=torch.float64, device=W.device), True)
        n2 = G.diagonal()
        coeffs = torch.zeros((0, W.shape[0]), dtype=torch.float64, device=W.device)
    in_norms = n2.to("cpu", torch.float64).clamp_min(0).sqrt()
    R1 = cholesky_skip(G, in_norms, rank_tol)
    G2 = transform_(W, inverse_transpose(R1).to(W.device), True)
    # Round two re-orthonormalizes an already near-orthonormal block; its threshold is
    # relative to the (unit) norms of round one's output.
    R2 = cholesky_skip(G2, (R1.diagonal() > 0).to(torch.float64), rank_tol)
    transform_(W, inverse_transpose(R2).to(W.device), False)
    return coeffs.to(torch.float64), (R2 @ R1).to(W.device)
