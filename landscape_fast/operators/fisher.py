r"""Operators built from per-sample gradients: empirical Fisher and gradient covariance.

With per-sample losses :math:`\ell_i` (the batch loss is their mean,
:math:`L_b = \frac{1}{n_b}\sum_{i\in b}\ell_i`) and gradients :math:`g_i = \nabla\ell_i`,

.. math::

    F = \frac{1}{N}\sum_i g_i g_i^\top ,\qquad
    \Sigma = \frac{1}{N}\sum_i (g_i - \bar g)(g_i - \bar g)^\top = F - \bar g \bar g^\top ,
    \qquad \bar g = \frac{1}{N}\sum_i g_i = \nabla L .

:math:`\Sigma` is the population covariance over the data set (divisor :math:`N`); it is
formed from centred gradients, never as the difference :math:`F - \bar g\bar g^\top`
(which cancels catastrophically when :math:`\|\bar g\|` dominates the noise).

Per-sample gradients come from ``torch.func.vmap(grad)`` over the samples of each batch,
chunked to the memory budget; when all :math:`N \times p` of them fit in half the budget
they are kept, and later products cost two matrix products per batch instead of a pass of
per-sample gradients. A product with a block is :math:`F V = \frac1N\sum_b (V G_b^\top) G_b`.

Per-sample gradients need per-sample losses: BatchNorm in ``"batch"`` mode (which couples
samples) and active dropout are refused, and the first batch is checked: the mean of the
per-sample losses must equal the batch loss.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import landscape_fast as lf
    >>> model = nn.Linear(3, 2).double()
    >>> X, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    >>> F = lf.EmpiricalFisher(model, "ce", (X, y))
    >>> S = lf.GradientCovariance(model, "ce", (X, y))
    >>> _, g = F.loss_and_gradient()
    >>> torch.allclose(F.to_dense() - torch.outer(g, g), S.to_dense())
    True
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch

from landscape_fast.data import Batch, slice_batch, unsqueeze_batch
from landscape_fast.operators.engines import check_finite_loss
from landscape_fast.operators.ghost_norms import (
    GhostNormUnsupported,
    LinearPlan,
    linear_plan,
    per_sample_sq_norms,
)
from landscape_fast.operators.model_operator import ModelOperator
from landscape_fast.operators.semantics import ModelFingerprint, ModelSemantics


class PerSampleGradientOperator(ModelOperator):
    """Base of :class:`EmpiricalFisher` and :class:`GradientCovariance`.

    Attributes:
        centered: Subtract the mean gradient from every per-sample gradient.
    """

    centered = False

    def __init__(self, model: Any, loss_fn: Any, data: Any, params: Any = None, **kwargs: Any):
        super().__init__(model, loss_fn, data, params, **kwargs)
        if self.batch_norm == "batch":
            raise ValueError(
                f"{type(self).__name__} needs per-sample gradients, which BatchNorm with batch "
                "statistics does not have (it couples the samples of a batch); use "
                "batch_norm='eval'"
            )
        if self.dropout:
            raise ValueError(
                f"{type(self).__name__}: per-sample gradients with active dropout are not "
                "supported; use dropout=False"
            )
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_ok = True
        self._state: ModelFingerprint | None = None
        self._mean: torch.Tensor | None = None
        self._checked = False

    # ------------------------------------------------------------------ per-sample grads
    def per_sample_gradients(self, index: int, batch: Batch) -> torch.Tensor:
        """``(n_b, p)`` per-sample gradients of batch ``index`` (compute dtype), cached while
        all of them fit in half the memory budget (do not modify the returned tensor)."""
        if index in self._cache:
            return self._cache[index]
        G = self._compute_per_sample_gradients(index, batch)
        itemsize = G.element_size()
        used = sum(t.numel() for t in self._cache.values()) * itemsize
        if self._cache_ok and used + G.numel() * itemsize <= self.memory_budget // 2:
            self._cache[index] = G
        else:
            self._cache_ok = False
            self._cache.clear()
        return G

    def stream_per_sample_gradients(self) -> Iterator[tuple[int, torch.Tensor]]:
        """One pass over the data: ``(batch index, (n_b, p) per-sample gradients)`` for every
        non-empty batch, in the operator's model semantics, computed fresh and not cached (the
        caller owns each tensor and may modify it in place).

        Example:
            >>> import torch, landscape_fast as lf
            >>> X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
            >>> S = lf.GradientCovariance(torch.nn.Linear(3, 2).double(), "ce", (X, y),
            ...                           batch_size=4)
            >>> [tuple(G.shape) for _, G in S.stream_per_sample_gradients()]
            [(4, 8), (2, 8)]
        """
        with self.semantics() as sem:
            self._before_pass()
            for index, batch, nb in self.batches(sem):
                if nb:
                    yield index, self._compute_per_sample_gradients(index, batch)

    def ghost_plan(self) -> tuple[LinearPlan | None, str]:
        """The :class:`~landscape_fast.operators.ghost_norms.LinearPlan` of the selected
        parameters, or ``(None, why not)``: whether :meth:`stream_per_sample_norms` applies."""
        return linear_plan(self.model, self.space.names)

    def stream_per_sample_norms(self) -> Iterator[tuple[int, Batch, torch.Tensor, torch.Tensor]]:
        r"""One pass over the data without forming per-sample gradients: ``(batch index, batch
        on the device, ‖g_i‖² (n_b,) float64, batch-mean gradient (p,))`` for every non-empty
        batch, by the ``nn.Linear`` norm identities of
        :mod:`~landscape_fast.operators.ghost_norms` (about one gradient's cost).

        Raises:
            GhostNormUnsupported: The selected parameters are not all ``nn.Linear`` weights and
                biases, or a layer runs more than once per forward pass.
        """
        plan, why = self.ghost_plan()
        if plan is None:
            raise GhostNormUnsupported(why)
        verified = False
        with self.semantics() as sem:
            self._before_pass()
            for index, batch, nb in self.batches(sem):
                if not nb:
                    continue
                theta = self.f.parameters(requires_grad=True)
                run_loss = functools.partial(self.f.loss, theta, batch)
                value, sq, mean = per_sample_sq_norms(plan, run_loss, theta, nb)
                check_finite_loss(value, index)
                if not verified:
                    self._verify_norms(theta, index, batch, value, sq)
                    verified = True
                flat = torch.cat([g.reshape(-1) for g in mean])
                self._check_finite(flat[None], index, "batch gradient")
                if not bool(torch.isfinite(sq).all()):
                    raise FloatingPointError(
                        f"non-finite per-sample gradient norm in batch {index}"
                    )
                yield index, batch, sq, flat

    def _verify_norms(
        self,
        theta: list[torch.Tensor],
        index: int,
        batch: Batch,
        value: torch.Tensor,
        sq: torch.Tensor,
        k: int = 4,
    ) -> None:
        """Check the first ``k`` samples one at a time (a plain loop: cheaper than a vmap for so
        few): their losses must average to the loss of those ``k`` (the per-sample check of
        the vmap path), and the first one's gradient must have the norm the identities gave
        (they assume each layer's leading dimension is the sample dimension)."""
        k = min(k, sq.shape[0])
        first = self.f.loss(theta, slice_batch(batch, 0, 1))
        norm = sum(
            float(g.double().square().sum())
            for g in torch.autograd.grad(first, theta, allow_unused=True)
            if g is not None
        )
        with torch.no_grad():
            losses = [float(first)]
            losses += [float(self.f.loss(theta, slice_batch(batch, j, j + 1))) for j in range(1, k)]
            sub = value if k == sq.shape[0] else self.f.loss(theta, slice_batch(batch, 0, k))
        tol = 1e3 * torch.finfo(self.compute_dtype).eps
        mean = sum(losses) / k
        if not abs(mean - float(sub)) <= tol * max(1.0, abs(float(sub))):
            self._refuse_per_sample(float(sub), mean)
        if not abs(float(sq[0]) - norm) <= tol * max(norm, float(sq[0])):
            raise GhostNormUnsupported(
                "the nn.Linear norm identities disagree with per-sample gradients on this "
                f"model (‖g_0‖² = {float(sq[0]):.6g} vs {norm:.6g}): a layer's leading "
                "dimension is not the sample dimension"
            )

    def _compute_per_sample_gradients(self, index: int, batch: Batch) -> torch.Tensor:
        from torch.func import grad, vmap

        theta = tuple(self.f.parameters(requires_grad=False))
        argnums = tuple(range(len(theta)))

        def sample_loss(t: tuple[torch.Tensor, ...], sample: Batch) -> torch.Tensor:
            return self.f.loss(t, unsqueeze_batch(sample))

        n = self.data.batch_size_fn(batch)
        p = self.shape[0]
        itemsize = torch.finfo(self.compute_dtype).bits // 8
        chunk = max(1, min(n, self.memory_budget // max(4 * p * itemsize, 1)))
        fn = vmap(
            grad(lambda *a: sample_loss(a[:-1], a[-1]), argnums=argnums),
            in_dims=(*[None] * len(theta), 0),
        )
        G = torch.empty(n, p, dtype=self.compute_dtype, device=self.device)
        for start in range(0, n, chunk):
            grads = fn(*theta, slice_batch(batch, start, start + chunk))
            rows = G[start : start + chunk]  # contiguous; columns in ParamSpace order
            torch.cat([g.reshape(rows.shape[0], -1) for g in grads], dim=1, out=rows)
        if not self._checked:
            self._check_per_sample(theta, batch, index)
        self._check_finite(G, index, "per-sample gradients")
        return G

    def _check_per_sample(self, theta: tuple[torch.Tensor, ...], batch: Batch, index: int) -> None:
        """The batch loss must be the mean of the per-sample losses (else F is not defined)."""
        from torch.func import vmap

        def sample_loss(sample: Batch) -> torch.Tensor:
            return self.f.loss(theta, unsqueeze_batch(sample))

        with torch.no_grad():
            batch_loss = self.f.loss(theta, batch)
            check_finite_loss(batch_loss, index)
            mean = vmap(sample_loss)(batch).mean()
        tol = 1e3 * torch.finfo(self.compute_dtype).eps * max(1.0, abs(float(batch_loss)))
        if not abs(float(mean) - float(batch_loss)) <= tol:  # NaN fails too
            self._refuse_per_sample(float(batch_loss), float(mean))
        self._checked = True

    def _refuse_per_sample(self, batch_loss: float, mean: float) -> None:
        raise ValueError(
            f"{type(self).__name__}: the batch loss ({batch_loss:.6g}) is not the mean of the "
            f"per-sample losses ({mean:.6g}), so per-sample gradients are not defined by it. "
            "Use a mean-reduced loss whose value on a batch is the average of its values on "
            "single samples: no reduction='sum', no class weights, no ignore_index targets (a "
            "sample whose only target is ignored has a NaN loss)."
        )

    # ------------------------------------------------------------------ products
    def _before_pass(self) -> None:
        if self._state is None or not self._state.matches():  # the model changed: drop caches
            self._cache.clear()
            self._cache_ok = True
            self._mean = None
            self._state = ModelFingerprint(self.model)

    def mean_gradient(self) -> torch.Tensor:
        r""":math:`\bar g = \nabla L` (cached while the parameters are unchanged)."""
        if self._mean is None:
            self._mean = self.loss_and_gradient()[1].to(self.compute_dtype)
        return self._mean

    def _batch_product(
        self, sem: ModelSemantics, index: int, batch: Batch, V: torch.Tensor
    ) -> torch.Tensor:
        G = self.per_sample_gradients(index, batch)
        if self.centered:
            G = G - self.mean_gradient()
        return (V @ G.T) @ G / G.shape[0]


class EmpiricalFisher(PerSampleGradientOperator):
    r"""Empirical Fisher :math:`F = \frac1N\sum_i g_i g_i^\top` (see the module docstring)."""


class GradientCovariance(PerSampleGradientOperator):
    r"""Gradient covariance :math:`\Sigma = \frac1N\sum_i (g_i-\bar g)(g_i-\bar g)^\top`."""

    centered = True
