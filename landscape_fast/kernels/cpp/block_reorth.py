"""``block_reorth`` on CPU through the C++/OpenMP kernels in ``csrc/cpu/block_reorth.cpp``.

The three streaming passes run in C++ (cache-blocked over columns, OpenMP over column
tiles, float64 partial sums); the ``b × b`` CholeskyQR2 bookkeeping is shared with the
other kernel backends (:mod:`landscape_fast.kernels.block_reorth_driver`). The ops are
``torch.ops.landscape_fast.reorth_{project,update_,transform_}``; the fake (meta)
implementations below let them run under ``torch.compile`` and ``torch.library.opcheck``.
"""

from __future__ import annotations

import torch

import landscape_fast._C  # noqa: F401  (registers torch.ops.landscape_fast)
from landscape_fast.kernels.block_reorth_driver import cgs2_cholqr2

_ops = torch.ops.landscape_fast
_F64 = torch.float64


@torch.library.register_fake("landscape_fast::reorth_project")
def _project_fake(Q: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        Q.new_empty((Q.shape[0], W.shape[0]), dtype=_F64),
        W.new_empty((W.shape[0],), dtype=_F64),
    )


@torch.library.register_fake("landscape_fast::reorth_update_")
def _update_fake(Q: torch.Tensor, W: torch.Tensor, C: torch.Tensor, gram: bool) -> torch.Tensor:
    rows = W.shape[0] if gram else Q.shape[0]
    return W.new_empty((rows, W.shape[0]), dtype=_F64)


@torch.library.register_fake("landscape_fast::reorth_transform_")
def _transform_fake(W: torch.Tensor, T: torch.Tensor, gram: bool) -> torch.Tensor:
    shape = (W.shape[0], W.shape[0]) if gram else (0,)
    return W.new_empty(shape, dtype=_F64)


def block_reorth_(
    Q: torch.Tensor, W: torch.Tensor, rank_tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place ``block_reorth`` on CPU tensors; returns ``(coeffs, R)`` in float64."""
    return cgs2_cholqr2(
        Q, W, rank_tol, _ops.reorth_project, _ops.reorth_update_, _ops.reorth_transform_
    )
