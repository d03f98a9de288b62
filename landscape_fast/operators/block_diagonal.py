r"""Block-diagonal restriction of an operator to groups of coordinates (per-layer curvature).

For a partition of the coordinates into groups :math:`g_1,\dots,g_L` (for a model: its
layers, :meth:`~landscape_fast.params.ParamSpace.layers`),

.. math::

    A_{\text{bd}} = \mathrm{blockdiag}(A_{g_1 g_1}, \dots, A_{g_L g_L}),\qquad
    (A_{\text{bd}} v)_{g_l} = (A\, P_l v)_{g_l},

where :math:`P_l` zeroes every coordinate outside :math:`g_l`. A ``(k, p)`` block becomes
one ``(kL, p)`` block for the inner operator, so all groups share one pass over the data.
Coordinates outside every group get zero curvature.

Example:
    >>> import torch
    >>> from landscape_fast.operators import DenseOperator
    >>> A = DenseOperator(torch.arange(16.0, dtype=torch.float64).reshape(4, 4).add(
    ...     torch.arange(16.0, dtype=torch.float64).reshape(4, 4).T))
    >>> B = BlockDiagonalOperator(A, [slice(0, 1), slice(1, 4)])
    >>> B.to_dense()[:2]
    tensor([[ 0.,  0.,  0.,  0.],
            [ 0., 10., 15., 20.]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from landscape_fast.operators.base import CurvatureOperator


class BlockDiagonalOperator(CurvatureOperator):
    """The diagonal blocks of ``op`` over disjoint coordinate ``groups`` (slices).

    Raises:
        ValueError: If groups overlap, are empty or exceed the operator's size.
    """

    def __init__(self, op: CurvatureOperator, groups: Sequence[slice]) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        p = op.shape[0]
        seen = torch.zeros(p, dtype=torch.bool)
        norm: list[slice] = []
        for g in groups:
            start, stop, step = g.indices(p)
            if step != 1 or stop <= start:
                raise ValueError(f"BlockDiagonalOperator: group {g} is empty or strided")
            if bool(seen[start:stop].any()):
                raise ValueError(f"BlockDiagonalOperator: group {g} overlaps another group")
            seen[start:stop] = True
            norm.append(slice(start, stop))
        if not norm:
            raise ValueError("BlockDiagonalOperator: no groups given")
        self.op = op
        self.groups = tuple(norm)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        k, L = V.shape[0], len(self.groups)
        expanded = V.new_zeros(L, k, V.shape[1])
        for i, g in enumerate(self.groups):
            expanded[i, :, g] = V[:, g]
        prod = self.op.matmat(expanded.reshape(L * k, -1)).reshape(L, k, -1)
        out = torch.zeros_like(V)
        for i, g in enumerate(self.groups):
            out[:, g] = prod[i, :, g]
        return out
