"""``softmax_ce_hvp`` on CPU through the C++/OpenMP kernel in ``csrc/cpu/softmax_ce_hvp.cpp``.

The op is ``torch.ops.landscape_fast.softmax_ce_hvp_(logits, U, weights, out)``: it writes
``out[j, n] = w_n p_n ⊙ (U[j, n] − ⟨p_n, U[j, n]⟩)`` for ``(N, C)`` logits and ``(k, N, C)``
tangents, row by row, with one scratch row of ``C`` values per thread (no ``(k, N, C)``
temporary). The fake (meta) implementation below lets it run under ``torch.compile`` and
``torch.library.opcheck``.
"""

from __future__ import annotations

import torch

import landscape_fast._C  # noqa: F401  (registers torch.ops.landscape_fast)

_ops = torch.ops.landscape_fast


@torch.library.register_fake("landscape_fast::softmax_ce_hvp_")
def _softmax_ce_hvp_fake(
    logits: torch.Tensor, U: torch.Tensor, weights: torch.Tensor | None, out: torch.Tensor
) -> None:
    return None


def softmax_ce_hvp_(
    logits: torch.Tensor,
    U: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """Write the softmax-CE Hessian times each tangent of ``U`` (``k × N × C``) into ``out``.

    ``logits`` is ``(N, C)`` and contiguous, ``weights`` ``(N,)`` in the arithmetic dtype
    (float64 for float64 tangents, else float32) or ``None``; ``out`` may be ``U``.
    """
    _ops.softmax_ce_hvp_(logits, U, weights, out)
