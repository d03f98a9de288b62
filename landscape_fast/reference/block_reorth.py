r"""Pure-PyTorch ``block_reorth``: the CPU fallback and the oracle for every kernel.

Definition (what every backend computes, up to rounding):

1. CGS2 of the whole block against the basis:
   :math:`C_1 = QW^\top,\ W \leftarrow W - C_1^\top Q`, then
   :math:`C_2 = QW^\top,\ W \leftarrow W - C_2^\top Q`.
2. Sequential Gram–Schmidt *within* the block, twice per vector, on the vectors
   themselves: for :math:`k = 1..b`, project row :math:`k` against the accepted output rows
   :math:`j < k` (coefficients :math:`R_{jk}`), then :math:`R_{kk} = \lVert w_k \rVert`; the row is
   normalized if :math:`R_{kk} > \text{rank\_tol}\,\lVert w_k^{in} \rVert`, else it is
   deficient (zero row, :math:`R_{kk} = 0`).

Kernels replace step 2 by CholeskyQR2 on a float64 Gram matrix (same result in exact
arithmetic); this file is deliberately the plain, vector-by-vector form.

Example:
    >>> import torch
    >>> from landscape_fast.reference.block_reorth import block_reorth_
    >>> Q = torch.eye(2, 5, dtype=torch.float64)
    >>> W = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0]], dtype=torch.float64)
    >>> C, R = block_reorth_(Q, W, 1e-7)
    >>> C.flatten().tolist(), R.item(), W.flatten().tolist()
    ([1.0, 2.0], 3.0, [0.0, 0.0, 1.0, 0.0, 0.0])
"""

from __future__ import annotations

import torch


def block_reorth_(
    Q: torch.Tensor, W: torch.Tensor, rank_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormalize ``W`` (``b × p``) in place against ``Q`` (``m × p``); see the module doc.

    Returns:
        ``(coeffs, R)``: float64 tensors of shape ``(m, b)`` and ``(b, b)``.
    """
    b = W.shape[0]
    in_norms = torch.linalg.vector_norm(W, dim=1).to(torch.float64)
    Qc = Q.to(W.dtype)  # exact upcast of a low-precision basis
    coeffs = torch.zeros((Q.shape[0], b), dtype=torch.float64, device=W.device)
    if Q.shape[0] > 0:
        for _ in range(2):
            C = Qc @ W.T
            W.sub_(C.T @ Qc)
            coeffs += C.to(torch.float64)

    R = torch.zeros((b, b), dtype=torch.float64, device=W.device)
    accepted: list[int] = []
    for k in range(b):
        w = W[k]
        if accepted:
            prev = W[accepted]
            for _ in range(2):
                r = prev @ w
                w.sub_(r @ prev)
                R[accepted, k] += r.to(torch.float64)
        norm = torch.linalg.vector_norm(w).to(torch.float64)
        if norm > rank_tol * in_norms[k] and norm > 0:
            w.div_(norm.to(W.dtype))
            R[k, k] = norm
            accepted.append(k)
        else:
            w.zero_()
    return coeffs, R
