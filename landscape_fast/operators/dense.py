r"""``DenseOperator``: an explicit symmetric matrix as a :class:`CurvatureOperator`.

For tests with known spectra and for small curvature matrices; :math:`V \mapsto V A`.

Example:
    >>> import torch
    >>> from landscape_fast.operators import DenseOperator
    >>> op = DenseOperator(torch.eye(3))
    >>> op.matmat(torch.ones(2, 3)).shape, op.n_matvecs
    (torch.Size([2, 3]), 2)
"""

from __future__ import annotations

import torch

from landscape_fast.operators.base import CurvatureOperator


class DenseOperator(CurvatureOperator):
    """An explicit ``p × p`` symmetric matrix.

    Args:
        matrix: Square floating-point tensor, symmetric up to ``sym_tol`` (relative).
        sym_tol: Relative asymmetry allowed, ``‖A − Aᵀ‖_max ≤ sym_tol · ‖A‖_max``; curvature
            solvers assume symmetry, so a non-symmetric matrix is an error, not a warning.

    Raises:
        ValueError: If the matrix is not square or not symmetric.
        TypeError: If it is not a floating-point tensor.
    """

    def __init__(self, matrix: torch.Tensor, *, sym_tol: float = 1e-6) -> None:
        if not isinstance(matrix, torch.Tensor) or not matrix.is_floating_point():
            raise TypeError("DenseOperator: matrix must be a floating-point torch.Tensor")
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"DenseOperator: matrix must be square, got {tuple(matrix.shape)}")
        scale = matrix.abs().max() if matrix.numel() else torch.tensor(0.0)
        asym = (matrix - matrix.T).abs().max() if matrix.numel() else torch.tensor(0.0)
        if asym > sym_tol * scale:
            raise ValueError(
                f"DenseOperator: matrix is not symmetric (max |A - Aᵀ| = {asym.item():.3e}, "
                f"max |A| = {scale.item():.3e}); pass (A + A.T) / 2 if that is what you mean"
            )
        super().__init__(matrix.shape[0], matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.matrix
