"""``block_reorth`` on CPU through the C++/OpenMP kernels in ``csrc/cpu/block_reorth.cpp``.

The three streaming passes run in C++ (cache-blocked over columns, OpenMP over column
tiles, float64 partial sums); the ``b × b`` CholeskyQR2 bookkeeping is shared with the
other kernel backends (:mod:`landscape_fast.kernels.block_reorth_driver`).
"""

from __future__ import annotations

import torch

import landscape_fast._C  # noqa: F401  (registers torch.ops.landscape_fast)
from landscape_fast.kernels.block_reorth_driver import cgs2_cholqr2

_ops = torch.ops.landscape_fast


def block_reorth_(
    Q: torch.Tensor, W: torch.Tensor, rank_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place ``block_reorth`` on CPU tensors; returns ``(coeffs, R)`` in float64."""
    return cgs2_cholqr2(
        Q, W, rank_tol, _ops.reorth_project, _ops.reorth_update_, _ops.reorth_transform_
    )
