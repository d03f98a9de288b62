r"""Cross-entropy whose second derivative is the fused ``softmax_ce_hvp`` op.

The exact HVP of a classifier or language model differentiates the loss twice. Through
PyTorch's ``cross_entropy`` the second derivative re-derives ``log_softmax``'s backward,
with several ``(N, C)`` temporaries per vector (``(k, N, C)`` for a batched block), which
dominates at language-model vocabularies. :func:`fused_cross_entropy` has the same value
and gradient, and its double backward applies the logits Hessian directly:

.. math::

    \frac{\partial L}{\partial z_n} = w_n (p_n - e_{y_n}),\qquad
    \frac{\partial^2 L}{\partial z_n^2} u_n = w_n (\mathrm{diag}(p_n) - p_n p_n^\top) u_n ,

with :math:`w_n = 1/\#\{\text{non-ignored rows}\}` (0 for ``ignore_index`` rows), via
:func:`~landscape_fast.ops.softmax_ce_hvp` — one pass over the tangents, no temporaries,
any backend. Under ``vmap`` (a batched second backward over a block of tangents) the same
formula runs elementwise from the saved softmax instead. Third derivatives are not
provided (they raise).

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    >>> y = torch.tensor([0, 1, 2, 3, -100, 1])
    >>> loss = fused_cross_entropy(z, y)
    >>> torch.allclose(loss, F.cross_entropy(z, y))
    True
    >>> (g,) = torch.autograd.grad(loss, z, create_graph=True)
    >>> u = torch.randn(6, 4, dtype=torch.float64)
    >>> (hu,) = torch.autograd.grad(g, z, u)
    >>> g2 = torch.autograd.grad(F.cross_entropy(z, y), z, create_graph=True)[0]
    >>> torch.allclose(hu, torch.autograd.grad(g2, z, u)[0])
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _is_batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is a vmap-batched tensor (``is_grads_batched`` uses the legacy kind)."""
    fn = torch._C._functorch
    return fn.is_batchedtensor(t) or fn.is_legacy_batchedtensor(t)


class _LogitsHessian(torch.autograd.Function):
    """``(logits, u, w) -> w (diag p - p pᵀ) u`` rowwise, by the fused op."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, u: torch.Tensor, weights: torch.Tensor):
        from landscape_fast.ops import softmax_ce_hvp

        return softmax_ce_hvp(logits.detach(), u.detach().contiguous(), weights=weights.detach())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        raise RuntimeError(
            "third derivatives through the fused cross-entropy are not provided; build the "
            "operator with hvp='forward' or pass the loss as a closure (lf.BatchLoss)"
        )


class _CrossEntropyGrad(torch.autograd.Function):
    """``(logits, g) -> g w (p - onehot)``; its backward applies the logits Hessian."""

    @staticmethod
    def forward(ctx: Any, logits, targets, weights, g):
        p = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        ctx.save_for_backward(logits, weights, p, g)
        g0 = p.clone()
        rows = torch.nonzero(weights != 0).squeeze(-1)
        g0[rows, targets[rows]] -= 1
        g0 = (g0 * weights[:, None]).to(logits.dtype)
        ctx.g0 = g0
        return g0 * g

    @staticmethod
    def backward(ctx: Any, u: torch.Tensor):
        logits, weights, p, g = ctx.saved_tensors
        if _is_batched(u):  # a block of tangents under vmap: the same formula, elementwise
            pu = p * u
            du = (pu - p * pu.sum(-1, keepdim=True)) * weights[:, None]
            du = du.to(u.dtype) * g
        else:
            du = _LogitsHessian.apply(logits, u, weights) * g
        dg = (ctx.g0 * u).sum() if ctx.needs_input_grad[3] else None
        return du, None, None, dg


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits, targets, weights, ignore_index: int):
        ctx.save_for_backward(logits, targets, weights)
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        logits, targets, weights = ctx.saved_tensors
        return _CrossEntropyGrad.apply(logits, targets, weights, g), None, None, None


def fused_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of ``(N, C)`` logits and class targets (see the module docstring)."""
    if logits.dim() != 2 or targets.dim() != 1 or targets.is_floating_point():
        raise ValueError(
            "fused_cross_entropy needs (N, C) logits and (N,) class-index targets; got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)} {targets.dtype}"
        )
    mask = targets != ignore_index
    weights = mask.to(torch.promote_types(logits.dtype, torch.float32))
    weights = weights / weights.sum().clamp_min(1)
    return _FusedCrossEntropy.apply(logits, targets, weights, ignore_index)
