r"""``lf.GGN``: the generalized Gauss–Newton matrix of the mean loss.

For model outputs :math:`f(x;\theta)` and a loss :math:`\ell(f, y)`,

.. math::

    G = \frac{1}{N}\sum_b n_b\, J_b^\top\, \nabla^2_f L_b\, J_b ,\qquad
    J_b = \partial f(x_b;\theta) / \partial\theta ,

positive semi-definite whenever the loss is convex in the outputs (cross-entropy, MSE).
Per batch and block, with one forward pass shared by all k vectors:

1. :math:`J V` by the double-backward trick :math:`Jv = \partial_u (J^\top u)\cdot v`
   (batched over the block),
2. :math:`\nabla^2_f L\, (JV)`: for softmax cross-entropy the fused op
   :func:`~landscape_fast.ops.softmax_ce_hvp` (no ``classes × classes`` or k-fold softmax
   intermediate); for any other loss a double backward through the loss on the outputs,
3. :math:`J^\top(\cdot)` by one batched backward.

Needs ``(inputs, targets)`` batches and a loss ``loss_fn(outputs, targets)``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import landscape_fast as lf
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> X, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    >>> G = lf.GGN(model, nn.CrossEntropyLoss(), (X, y))
    >>> bool(torch.linalg.eigvalsh(G.to_dense()).min() > -1e-12)   # PSD
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import autograd

from landscape_fast.data import Batch
from landscape_fast.operators.engines import (
    assert_twice_differentiable,
    block_vjp,
    check_finite_loss,
)
from landscape_fast.operators.model_operator import ModelOperator
from landscape_fast.operators.semantics import ModelSemantics


def cross_entropy_weights(outputs: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    r"""Per-row weights :math:`w_n` with :math:`\nabla^2_z L = \mathrm{blockdiag}_n\,
    w_n(\mathrm{diag}(p_n) - p_n p_n^\top)` for mean-reduced cross-entropy."""
    if targets.is_floating_point():  # class probabilities: d²/dz² = (Σ_c q_c)(diag p - p pᵀ)
        return targets.sum(-1).to(outputs.dtype) / outputs.shape[0]
    mask = (targets != ignore_index).to(outputs.dtype)
    return mask / mask.sum().clamp_min(1)


class GGN(ModelOperator):
    """Generalized Gauss–Newton :math:`J^\\top H_\\ell J` (see the module docstring).

    Args:
        model, loss_fn, data, params: See :class:`ModelOperator`.
        fused: Use the fused softmax-cross-entropy op when the loss is a plain
            cross-entropy on ``(N, C)`` logits (default ``True``); ``False`` forces the
            generic double backward through the loss.
        **kwargs: See :class:`ModelOperator`.
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Any,
        data: Any,
        params: Any = None,
        *,
        fused: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, loss_fn, data, params, **kwargs)
        self.fused = bool(fused)
        self.batched = True

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["loss_hessian"] = (
            "fused softmax_ce_hvp" if self.fused and self.f.cross_entropy else "double backward"
        )
        return out

    def _loss_hessian(self, outputs: torch.Tensor, batch: Batch, JV: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla^2_f L_b` applied to each row of the ``(k, *outputs.shape)`` block."""
        spec = self.f.cross_entropy
        if self.fused and spec is not None and outputs.dim() == 2:
            from landscape_fast.ops import softmax_ce_hvp

            w = cross_entropy_weights(outputs, batch[1], spec["ignore_index"])
            tangents = JV.detach().contiguous()  # ours alone: overwritten in place
            return softmax_ce_hvp(outputs.detach(), tangents, weights=w, out=tangents)
        out_leaf = outputs.detach().requires_grad_()
        with torch.enable_grad():
            loss = self.f.loss_on_outputs(out_leaf, batch)
            (g,) = autograd.grad(loss, out_leaf, create_graph=True)
        (res,) = block_vjp([g], [out_leaf], [JV], batched=self.batched)
        return torch.zeros_like(JV) if res is None else res

    def _batch_product(
        self, sem: ModelSemantics, index: int, batch: Batch, V: torch.Tensor
    ) -> torch.Tensor:
        if self.f.is_closure(batch):
            raise TypeError(
                "GGN needs (inputs, targets) batches and loss_fn(outputs, targets): the "
                "Gauss–Newton split needs the model outputs. Use lf.Hessian for closure losses."
            )
        theta = self.f.parameters()
        outputs = self.f.outputs(theta, batch)
        check_finite_loss(self.f.loss_on_outputs(outputs.detach(), batch), index)
        views = self.space.views(V)
        u = torch.zeros_like(outputs, requires_grad=True)
        jtu = autograd.grad(outputs, theta, u, create_graph=True, allow_unused=True)
        assert_twice_differentiable(jtu, "GGN (Jacobian products by double backward)")
        try:
            (JV,) = block_vjp(list(jtu), [u], views, batched=self.batched)
        except RuntimeError:
            self.batched = False
            (JV,) = block_vjp(list(jtu), [u], views, batched=False)
        if JV is None:  # outputs do not depend on the selected parameters
            return torch.zeros_like(V)
        HJV = self._loss_hessian(outputs, batch, JV)
        prods = block_vjp([outputs], theta, [HJV], batched=self.batched)
        return self.flat_block(prods, V)
