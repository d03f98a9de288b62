r"""Pure-PyTorch ``softmax_ce_hvp``: the CPU fallback and the oracle for every kernel.

Definition (what every backend computes, up to rounding). For logits :math:`z_n` (row
``n`` of an ``(N, C)`` matrix), tangents :math:`u_{jn}` (row ``n`` of ``U[j]``) and weights
:math:`w_n`:

.. math::

    \mu_n = \max_c z_{nc}\ (\text{0 if every } z_{nc} = -\infty),\qquad
    e_{nc} = \exp(z_{nc} - \mu_n),\qquad
    p_{nc} = e_{nc} / \textstyle\sum_c e_{nc}\ (\text{0 if the sum is 0}),

.. math::

    s_{jn} = \sum_c p_{nc} u_{jnc},\qquad
    \mathrm{out}_{jnc} = w_n\, p_{nc}\,(u_{jnc} - s_{jn}),

and :math:`\mathrm{out}_{jn} = 0` exactly wherever :math:`w_n = 0` (those rows are not
read). Arithmetic is float64 for float64 tangents, float32 otherwise.

This file is deliberately the plain tensor form: one ``(N, C)`` probability matrix for the
whole call and, per tangent ``j``, ``(N, C)`` temporaries only; never an ``(N, C, C)``
Hessian nor a ``(k, N, C)`` temporary besides the output.

Example:
    >>> import torch
    >>> from landscape_fast.reference.softmax_ce_hvp import softmax_ce_hvp_
    >>> z = torch.zeros(1, 2, dtype=torch.float64)           # p = (1/2, 1/2)
    >>> U = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    >>> out = torch.empty_like(U)
    >>> softmax_ce_hvp_(z, U, None, out)
    >>> out.flatten().tolist()                                # (diag(p) - p p^T) e_1
    [0.25, -0.25]
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype for tangents of ``dtype``: float64 stays float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def probabilities(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row-wise softmax of ``(N, C)`` logits in ``dtype``; a row of ``-inf`` gives zeros."""
    z = logits.to(dtype)
    mu = z.amax(dim=1, keepdim=True)
    mu = mu.masked_fill(mu == float("-inf"), 0.0)
    e = torch.exp(z - mu)
    total = e.sum(dim=1, keepdim=True)
    inv = torch.where(total == 0, torch.zeros_like(total), 1.0 / total)
    return e.mul_(inv)


def softmax_ce_hvp_(
    logits: torch.Tensor,
    U: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
) -> None:
    """Write the per-sample softmax-CE Hessian times every tangent into ``out``.

    Args:
        logits: ``(N, C)`` logits.
        U: ``(k, N, C)`` tangents.
        weights: ``(N,)`` per-sample weights in the arithmetic dtype, or ``None`` (all 1).
        out: ``(k, N, C)`` output of ``U``'s dtype; may be ``U`` itself (in-place update).
    """
    acc = acc_dtype(U.dtype)
    p = probabilities(logits, acc)
    zero_rows = None
    if weights is not None:
        w = weights.to(acc)
        zero_rows = w == 0
        wp = p * w[:, None]
    else:
        wp = p
    for j in range(U.shape[0]):
        u = U[j].to(acc)
        s = (p * u).sum(dim=1, keepdim=True)
        res = (u - s).mul_(wp)
        if zero_rows is not None:
            res.masked_fill_(zero_rows[:, None], 0.0)
        out[j].copy_(res)
