"""``EigenResult``: eigenpairs with their true residuals, as every eigensolver returns them.

Example:
    >>> import torch
    >>> from landscape_fast.linalg.result import EigenResult
    >>> r = EigenResult(torch.tensor([2.0]), torch.eye(1), torch.tensor([0.0]),
    ...                 torch.tensor([True]), 1, [])
    >>> r.eigenvalues.tolist(), bool(r.converged.all())
    ([2.0], True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class EigenResult(NamedTuple):
    """Eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: ``(k,)`` float64 eigenvalue estimates.
        eigenvectors: ``(k, p)`` unit eigenvector estimates (rows), in the operator's dtype.
        residuals: ``(k,)`` float64 true residual norms ``‖A v − λ v‖``.
        converged: ``(k,)`` bool: the residual met the solver's stated criterion.
        n_matvecs: Operator products spent.
        history: Solver-specific convergence record (see each solver).
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    n_matvecs: int
    history: Any
