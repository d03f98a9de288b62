r"""``lf.Hessian``: the exact Hessian of the mean loss over a data set.

.. math::

    H = \nabla^2_\theta L(\theta),\qquad L = \frac{1}{N}\sum_b n_b L_b ,
    \qquad H V = \frac{1}{N}\sum_b n_b\, \nabla^2 L_b\, V .

The product of a ``(k, p)`` block is one pass over the data; inside each batch the forward
pass (and, with the ``cached`` engine, the first backward) is shared by all k vectors. The
engine is chosen by ``hvp=`` (see :mod:`landscape_fast.operators.engines`); ``"auto"``
probes the first batch and picks, in order of speed on these machines, ``cached`` (double
backward works), ``forward`` (only forward-mode works), ``finite_difference`` (no
second-order derivatives at all, e.g. fused attention kernels). Where the loss's graph
holds derivative rules written by users (custom ``autograd.Function`` s), an exact engine is
accepted only if it also agrees with finite differences in float64 on a few samples (a
once-differentiable custom backward would otherwise make it silently wrong); built-in
operators either have second derivatives or raise. The choice and the reasons are in
:attr:`Hessian.engine` and :attr:`Hessian.engine_reason`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import landscape_fast as lf
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    >>> X, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    >>> H = lf.Hessian(model, nn.CrossEntropyLoss(), (X, y), batch_size=10)
    >>> V = torch.randn(4, H.shape[0], dtype=torch.float64)
    >>> HV = H.matmat(V)                   # one pass over the 4 batches for all 4 vectors
    >>> H.engine, H.n_matvecs
    ('cached', 4)
    >>> torch.allclose(V @ HV.T, (V @ HV.T).T)   # symmetric
    True
"""

from __future__ import annotations

from typing import Any

import torch

from landscape_fast.data import Batch
from landscape_fast.operators.engines import (
    HVPEngine,
    check_engine,
    make_engine,
    probe,
)
from landscape_fast.operators.model_operator import ModelOperator
from landscape_fast.operators.semantics import ModelSemantics

#: Engines ``hvp="auto"`` tries, fastest first (CPU measurements in BENCHMARKS.md).
AUTO_ORDER = ("cached", "forward", "finite_difference")


class Hessian(ModelOperator):
    """The exact Hessian of the sample-weighted mean loss (see the module docstring).

    Args:
        model, loss_fn, data, params: See :class:`ModelOperator`.
        hvp: ``"auto"``, ``"reverse"``, ``"cached"``, ``"forward"`` or
            ``"finite_difference"``, or a configured engine instance (e.g.
            ``FiniteDifferenceEngine(step_scale=0.1)``).
        **kwargs: ``batch_norm``, ``dropout``, ``dtype``, ``batch_size``, ``batch_size_fn``,
            ``memory_budget`` (see :class:`ModelOperator`).

    Attributes:
        engine: Name of the engine in use (``None`` until the first product for ``"auto"``).
        engine_reason: Why ``"auto"`` chose it (engines that failed on the model and why).
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Any,
        data: Any,
        params: Any = None,
        *,
        hvp: str | HVPEngine = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, loss_fn, data, params, **kwargs)
        self._engine: HVPEngine | None = None
        self.engine_reason: str | None = None
        if isinstance(hvp, HVPEngine):  # a configured engine instance
            self.hvp, self._engine, self.engine_reason = hvp.name, hvp, "requested"
            return
        self.hvp = check_engine(hvp)
        if hvp != "auto":
            self._engine = make_engine(hvp, budget=self.memory_budget, dropout=self.dropout)
            self.engine_reason = "requested"

    @property
    def engine(self) -> str | None:
        return None if self._engine is None else self._engine.name

    def _resolve(self) -> HVPEngine:
        if self._engine is not None:
            return self._engine
        failures: dict[str, str] = {}
        for attention, candidates in (("math", AUTO_ORDER[:2]), ("default", AUTO_ORDER[2:])):
            with self.semantics(attention) as sem:
                index, batch, _ = next(self.batches(sem))
                engine, failed = probe(
                    self.f,
                    batch,
                    candidates,
                    budget=self.memory_budget,
                    dropout=self.dropout,
                    rng=lambda sem=sem, i=index: sem.batch_rng(i, self.device),
                )
            failures.update(failed)
            if engine is not None:
                self._engine = engine
                tried = "; ".join(f"{k} failed: {v}" for k, v in failures.items())
                self.engine_reason = tried or "fastest engine that works for this model"
                return engine
        detail = "; ".join(f"{k}: {v}" for k, v in failures.items())
        raise RuntimeError(f"Hessian: no HVP engine works for this model ({detail})")

    def _attention(self) -> str:
        return self._resolve().attention

    def _before_pass(self) -> None:
        self._resolve().begin_pass(self.f)

    def _batch_product(
        self, sem: ModelSemantics, index: int, batch: Batch, V: torch.Tensor
    ) -> torch.Tensor:
        engine = self._resolve()
        views = self.space.views(V)
        prods = engine.batch_products(
            self.f, index, batch, views, lambda: sem.batch_rng(index, self.device)
        )
        return self.flat_block(prods, V)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(hvp=self.hvp, engine=self.engine, engine_reason=self.engine_reason)
        return out
