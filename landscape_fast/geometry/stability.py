r"""Linear stability of a minimum under GD and SGD (Wu, Ma & E 2018).

Near a minimum :math:`\theta^*` with Hessian :math:`H = \frac1n\sum_i H_i` (per-sample
Hessians :math:`H_i = \nabla^2\ell_i`), gradient descent with learning rate :math:`\eta` is
linearly stable only if

.. math::

    a = \lambda_{\max}(H) \le \frac{2}{\eta} .

For SGD with batches of :math:`B` of the :math:`n` samples drawn without replacement, the
second moment of the linearized dynamics stays bounded only if (Wu, Ma & E 2018, "How SGD
selects the global minima in over-parameterized learning", NeurIPS)

.. math::

    (1 - \eta a)^2 + \eta^2 s^2\, \frac{n - B}{B(n - 1)} \le 1 ,\qquad
    s^2 = \lambda_{\max}\Big(\frac1n\sum_i H_i^2 - H^2\Big)
        = \lambda_{\max}\Big(\frac1n\sum_i (H_i - H)^2\Big) ,

so :math:`a \le 2/\eta` and :math:`s \lesssim \sqrt{B}/\eta`. The *non-uniformity*
:math:`s^2` is obtained either

- as a cheap **lower bound** (``nonuniformity="lower_bound"``): the Rayleigh quotient of
  :math:`M = \frac1n\sum_i (H_i - H)^2` at the top eigenvector :math:`v` of :math:`H`,

  .. math::

      s^2 \ \ge\ v^\top M v = \frac1n\sum_i \lVert H_i v - H v\rVert^2
      \ \approx\ \frac1n\sum_i\lVert H_i v\rVert^2 - a^2 ,

  one pass of per-sample Hessian-vector products. If the condition fails with it, the point
  is certainly SGD-unstable; if it holds, nothing follows (``sgd_stable=None``);
- **exactly** (``nonuniformity="exact"``): :math:`s^2 = \lambda_{\max}(M)` by
  :func:`~landscape_fast.linalg.eigsh` on :math:`M`, whose product
  :math:`Mv = \frac1n\sum_i H_i (H_i v - Hv)` costs one Hessian product and two per-sample
  HVPs per sample (for small models); the verdict is then definite.

Per-sample HVPs :math:`H_i v = \nabla_\theta(\nabla_\theta\ell_i\cdot v)` are
``torch.func.vmap`` of a double backward (``vjp`` of ``grad``) over the samples of each
batch, chunked to the operator's memory budget, in the operator's model semantics (so the
batch loss must be the mean of per-sample losses: no BatchNorm in ``"batch"`` mode, no
active dropout).

Linear stability is a statement about minima: when :math:`\lambda_{\min}(H) < 0` the point
is a saddle or not stationary, and the verdict says so.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape_fast.geometry.stability import stability
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 1, bias=False).double()
    >>> X = torch.randn(20, 3, dtype=torch.float64)
    >>> y = torch.randn(20, 1, dtype=torch.float64)
    >>> r = stability(model, lr=0.1, batch_size=4, loss_fn="mse", data=(X, y),
    ...               nonuniformity="exact", tol=1e-8)
    >>> r.gd_stable, r.sgd_stable, r.s_kind
    (True, True, 'exact')
    >>> r.gd_threshold
    20.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape_fast.data import Batch, slice_batch, unsqueeze_batch
from landscape_fast.linalg.eigsh import eigsh
from landscape_fast.linalg.result import EigenResult
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.operators.engines import check_finite_loss
from landscape_fast.operators.hessian import Hessian

NONUNIFORMITY = ("lower_bound", "exact", "none")


# ---------------------------------------------------------------------- result
@dataclass(frozen=True)
class Stability:
    """Result of :func:`stability` (see the module docstring for the math).

    Attributes:
        lr: Learning rate :math:`\\eta`.
        batch_size: SGD batch size :math:`B` (``None``: GD only).
        n: Number of samples :math:`n` (``None`` for a plain operator).
        lambda_max, lambda_min: Extreme eigenvalues of the Hessian (:math:`a` is
            ``lambda_max``).
        lambda_max_residual, lambda_min_residual: Their true residuals ``‖Hv − λv‖``.
        lambda_max_converged, lambda_min_converged: Whether eigsh met ``tol`` for them.
        is_minimum: ``lambda_min`` is not negative beyond its accuracy.
        gd_threshold: :math:`2/\\eta`.
        gd_margin: :math:`\\eta a / 2` (GD-stable iff at most 1).
        gd_stable: :math:`\\eta a \\le 2`.
        s_squared: Non-uniformity :math:`s^2` (or its lower bound); ``None`` if not computed.
        s_kind: ``"lower bound"``, ``"exact"`` or ``None``.
        s_squared_converged: For ``"exact"``: whether eigsh converged on :math:`M`.
        sgd_lhs: :math:`(1-\\eta a)^2 + \\eta^2 s^2 (n-B)/(B(n-1))` (a lower bound of it when
            ``s_kind`` is ``"lower bound"``).
        sgd_stable: ``True``/``False`` when decided, ``None`` when inconclusive (lower
            bound satisfied, or no ``s²``).
        verdict: One sentence.
        n_matvecs: Products with the (full) Hessian.
        n_sample_hvps: Per-sample Hessian-vector products.
        notes: Caveats.
    """

    lr: float
    batch_size: int | None
    n: int | None
    lambda_max: float
    lambda_min: float
    lambda_max_residual: float
    lambda_min_residual: float
    lambda_max_converged: bool
    lambda_min_converged: bool
    is_minimum: bool
    gd_threshold: float
    gd_margin: float
    gd_stable: bool
    s_squared: float | None
    s_kind: str | None
    s_squared_converged: bool | None
    sgd_lhs: float | None
    sgd_stable: bool | None
    verdict: str
    n_matvecs: int
    n_sample_hvps: int
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for a paper or a log."""
        parts = [
            f"lr={self.lr:.4g}: lambda_max={self.lambda_max:.4g} vs 2/lr={self.gd_threshold:.4g} "
            f"(lr*lambda_max/2={self.gd_margin:.3g}), lambda_min={self.lambda_min:.3g}"
        ]
        if self.batch_size is not None and self.sgd_lhs is not None:
            rel = ">=" if self.s_kind == "lower bound" else "="
            parts.append(
                f"B={self.batch_size}, n={self.n}: s^2 {rel} {self.s_squared:.4g}, SGD criterion "
                f"{rel} {self.sgd_lhs:.4g} (stable iff <= 1)"
            )
        return "; ".join(parts) + f". {self.verdict}"


# ---------------------------------------------------------------------- per-sample HVPs
class _SampleHVP:
    """Per-sample Hessian-vector products of a :class:`Hessian`'s model, chunk by chunk."""

    def __init__(self, H: Hessian, chunk_size: int | None = None) -> None:
        if H.batch_norm == "batch":
            raise ValueError(
                "per-sample curvature needs per-sample losses, which BatchNorm with batch "
                "statistics does not have (it couples the samples of a batch); build the "
                "Hessian with batch_norm='eval'"
            )
        if H.dropout:
            raise ValueError(
                "per-sample curvature with active dropout is not supported; build the Hessian "
                "with dropout=False"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.H = H
        self.chunk_size = chunk_size
        self.count = 0
        self._checked = False
        self._index = 0

    def _chunk(self) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        H = self.H
        itemsize = torch.finfo(H.compute_dtype).bits // 8
        return max(1, H.memory_budget // max(8 * H.shape[0] * itemsize, 1))

    def chunks(self) -> Iterator[tuple[int, Batch, int]]:
        """``(first sample index, chunk of samples, size)`` over the whole data, in semantics."""
        H = self.H
        chunk = self._chunk()
        start_global = 0
        with H.semantics() as sem:
            for index, batch, n in H.batches(sem):
                if n == 0:
                    continue
                self._index = index
                if not self._checked:
                    self._check_per_sample(batch, index)
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    yield start_global + start, slice_batch(batch, start, stop), stop - start
                start_global += n

    def _check_per_sample(self, batch: Batch, index: int) -> None:
        """The batch loss must be the mean of the per-sample losses (else H_i is undefined)."""
        from torch.func import vmap

        f = self.H.f
        theta = tuple(f.parameters(requires_grad=False))
        with torch.no_grad():
            batch_loss = f.loss(theta, batch)
            check_finite_loss(batch_loss, index)
            mean = vmap(lambda s: f.loss(theta, unsqueeze_batch(s)))(batch).mean()
        tol = 1e3 * torch.finfo(self.H.compute_dtype).eps * max(1.0, abs(float(batch_loss)))
        if not abs(float(mean) - float(batch_loss)) <= tol:
            raise ValueError(
                f"the batch loss ({float(batch_loss):.6g}) is not the mean of the per-sample "
                f"losses ({float(mean):.6g}), so per-sample Hessians are not defined by it; use "
                "a mean-reduced loss whose value on a batch is the average of its values on "
                "single samples (no reduction='sum', no class weights, no ignored targets)"
            )
        self._checked = True

    def apply(self, chunk: Batch, V: torch.Tensor) -> torch.Tensor:
        """``(m, p)`` rows :math:`H_i v_i` for the ``m`` samples of ``chunk``.

        ``V``: one ``(p,)`` vector for all samples, or ``(m, p)``, one per sample (any dtype;
        computed in the operator's compute dtype, returned in its dtype).
        """
        from torch.func import grad, vjp, vmap

        H = self.H
        f = H.f
        theta = tuple(f.parameters(requires_grad=False))
        k = len(theta)
        Vc = V.to(H.compute_dtype)
        views = tuple(H.space.views(Vc))

        def one(*args: Any) -> tuple[torch.Tensor, ...]:
            params, sample, vecs = args[:k], args[k], args[k + 1 :]

            def g(*q: torch.Tensor) -> tuple[torch.Tensor, ...]:
                return grad(lambda *r: f.loss(r, unsqueeze_batch(sample)), argnums=tuple(range(k)))(
                    *q
                )

            _, pullback = vjp(g, *params)
            return pullback(tuple(vecs))

        vec_dim = 0 if V.dim() == 2 else None
        fn = vmap(one, in_dims=(*[None] * k, 0, *[vec_dim] * k))
        prods = fn(*theta, chunk, *views)
        m = prods[0].shape[0]
        out = torch.zeros(m, H.shape[0], dtype=H.dtype, device=H.device)
        for view, t in zip(H.space.views(out), prods):
            view.copy_(t)
        H._check_finite(out, self._index, "per-sample Hessian-vector product")
        self.count += m
        return out


def per_sample_hvp(
    hessian: Hessian, V: torch.Tensor, *, chunk_size: int | None = None
) -> torch.Tensor:
    r"""Per-sample Hessian-vector products :math:`H_i v_i` for every sample of the data.

    Args:
        hessian: An :class:`~landscape_fast.operators.Hessian` (its model, loss, data,
            parameter selection, dtype and semantics are used).
        V: One ``(p,)`` vector (the same for all samples) or an ``(n, p)`` block (one per
            sample, in data order).
        chunk_size: Samples per vmapped call (default: from the memory budget).

    Returns:
        ``(n, p)`` tensor whose row ``i`` is :math:`\nabla^2\ell_i\, v_i`; their mean is
        :math:`Hv` for a shared :math:`v`. Holds ``n × p`` numbers: for small problems.
    """
    helper = _SampleHVP(hessian, chunk_size)
    p = hessian.shape[0]
    if V.dim() not in (1, 2) or V.shape[-1] != p:
        raise ValueError(f"V must be ({p},) or (n, {p}), got {tuple(V.shape)}")
    rows = []
    for start, chunk, m in helper.chunks():
        if V.dim() == 2 and start + m > V.shape[0]:
            raise ValueError(f"V has {V.shape[0]} rows but the data has more samples")
        rows.append(helper.apply(chunk, V if V.dim() == 1 else V[start : start + m]))
    out = torch.cat(rows)
    if V.dim() == 2 and V.shape[0] != out.shape[0]:
        raise ValueError(f"V has {V.shape[0]} rows but the data has {out.shape[0]} samples")
    return out


class NonUniformityOperator(CurvatureOperator):
    r""":math:`M = \frac1n\sum_i (H_i - H)^2 = \frac1n\sum_i H_i^2 - H^2` (symmetric PSD).

    A product is one Hessian product and two per-sample HVPs per sample and vector,
    :math:`Mv = \frac1n\sum_i H_i (H_i v - Hv)` (the centred form: no cancellation of two
    :math:`O(a^2)` terms when :math:`s^2 \ll a^2`). For small models.
    """

    def __init__(self, hessian: Hessian, chunk_size: int | None = None) -> None:
        super().__init__(hessian.shape[0], hessian.dtype, hessian.device)
        self.hessian = hessian
        self.helper = _SampleHVP(hessian, chunk_size)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        HV = self.hessian.matmat(V)
        out = torch.zeros_like(V)
        total = 0
        for _, chunk, m in self.helper.chunks():
            for j in range(V.shape[0]):
                U = self.helper.apply(chunk, V[j]).sub_(HV[j])
                out[j].add_(self.helper.apply(chunk, U).sum(0))
            total += m
        return out.div_(total)


# ---------------------------------------------------------------------- main entry
def _sgd_factor(n: int, B: int) -> float:
    r""":math:`(n - B)/(B(n - 1))` (0 for full batch, including n = 1)."""
    return 0.0 if n == B else (n - B) / (B * (n - 1))


def _count_samples(H: Hessian) -> int:
    return sum(n for _, n in H.data)


def stability(
    op_or_model: CurvatureOperator | nn.Module,
    lr: float,
    batch_size: int | None = None,
    *,
    loss_fn: Any = None,
    data: Any = None,
    nonuniformity: str = "lower_bound",
    tol: float = 1e-4,
    seed: int = 0,
    top: EigenResult | None = None,
    bottom: EigenResult | None = None,
    **operator_kwargs: Any,
) -> Stability:
    r"""Linear stability of the current point under GD (and SGD with ``batch_size``).

    See the module docstring for the conditions. GD: :math:`\eta\lambda_{\max}(H) \le 2`.
    SGD: :math:`(1-\eta a)^2 + \eta^2 s^2 (n-B)/(B(n-1)) \le 1`.

    Args:
        op_or_model: A :class:`~landscape_fast.operators.CurvatureOperator` (any symmetric
            operator allows the GD check; SGD needs an :class:`~landscape_fast.Hessian`), or an
            ``nn.Module`` together with ``loss_fn`` and ``data`` (a Hessian is built with
            ``**operator_kwargs``). ``batch_size`` here is the SGD batch, not how the data
            is split for the products: to split the data, pass a list of batches or an
            ``lf.Hessian(..., batch_size=...)``.
        lr: Learning rate :math:`\eta > 0`.
        batch_size: SGD batch size :math:`B` with :math:`1 \le B \le n`; ``None``: GD only.
        loss_fn, data: For a module (see :class:`~landscape_fast.Hessian`).
        nonuniformity: ``"lower_bound"`` (default; cheap, one-sided verdict), ``"exact"``
            (eigsh on :math:`M`; small models) or ``"none"`` (skip :math:`s^2`).
        tol: Relative eigsh tolerance.
        seed: eigsh seed.
        top, bottom: Already computed ``eigsh(H, which="LA")`` / ``eigsh(H, which="SA")``
            results of the same operator (e.g. from :func:`landscape_fast.analyze`); their
            first pair is used instead of solving again.
        **operator_kwargs: Passed to :class:`~landscape_fast.Hessian` for a module
            (``dtype``, ``params``, ``memory_budget``, ``hvp``, ...).

    Returns:
        :class:`Stability`. The model is left exactly as it was.

    Raises:
        ValueError: For ``lr <= 0``, ``batch_size`` outside ``[1, n]``, an unknown
            ``nonuniformity``, a module without ``loss_fn``/``data``, or SGD requested on an
            operator without per-sample curvature.
        TypeError: If ``op_or_model`` is neither an operator nor a module.
    """
    lr = float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite learning rate, got {lr}")
    if nonuniformity not in NONUNIFORMITY:
        raise ValueError(
            f"nonuniformity must be one of {NONUNIFORMITY}, got {nonuniformity!r}: "
            "'lower_bound' (cheap, proves instability only), 'exact' (eigsh, small models), "
            "'none' (GD check only)"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer (the SGD batch), got {batch_size}")

    if isinstance(op_or_model, CurvatureOperator):
        if loss_fn is not None or data is not None or operator_kwargs:
            raise ValueError(
                "stability: loss_fn, data and operator keyword arguments are only for a model; "
                "the operator already defines them"
            )
        H = op_or_model
    elif isinstance(op_or_model, nn.Module):
        if loss_fn is None or data is None:
            raise ValueError(
                "stability: a model needs loss_fn= and data= (e.g. stability(model, lr, "
                "loss_fn=nn.CrossEntropyLoss(), data=(X, y))), or pass an lf.Hessian"
            )
        H = Hessian(op_or_model, loss_fn, data, **operator_kwargs)
    else:
        raise TypeError(
            "stability: op_or_model must be a CurvatureOperator or an nn.Module, got "
            f"{type(op_or_model).__name__}"
        )

    n: int | None = None
    if isinstance(H, Hessian):
        n = _count_samples(H)
    if batch_size is not None:
        if not isinstance(H, Hessian):
            raise ValueError(
                f"stability: the SGD check (batch_size={batch_size}) needs per-sample curvature, "
                f"which a {type(H).__name__} does not have; pass the model with loss_fn= and "
                "data= (or an lf.Hessian), or omit batch_size for the GD check only"
            )
        assert n is not None
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} exceeds the number of samples n={n}")
        batch_size = int(batch_size)

    start_matvecs = H.n_matvecs
    notes: list[str] = []

    if top is None:
        top = eigsh(H, k=1, which="LA", tol=tol, seed=seed)
    if bottom is None:
        bottom = eigsh(H, k=1, which="SA", tol=tol, seed=seed)
    a = float(top.eigenvalues[0])
    lam_min = float(bottom.eigenvalues[0])
    res_max, res_min = float(top.residuals[0]), float(bottom.residuals[0])
    conv_max, conv_min = bool(top.converged[0]), bool(bottom.converged[0])
    scale = max(abs(a), abs(lam_min))
    is_minimum = lam_min >= -(res_min + tol * scale)
    gd_threshold = 2.0 / lr
    gd_margin = lr * a / 2.0
    gd_stable = lr * a <= 2.0

    s2: float | None = None
    s_kind: str | None = None
    s_conv: bool | None = None
    sgd_lhs: float | None = None
    sgd_stable: bool | None = None
    n_sample = 0
    if batch_size is not None and nonuniformity != "none":
        assert isinstance(H, Hessian) and n is not None
        if nonuniformity == "lower_bound":
            helper = _SampleHVP(H)
            v = top.eigenvectors[0].to(H.dtype)
            v = v / v.norm()
            Hv = H.matmat(v)
            acc = 0.0
            for _, chunk, _m in helper.chunks():
                U = helper.apply(chunk, v).sub_(Hv)
                acc += float(U.double().square().sum())
            s2, s_kind = acc / n, "lower bound"
            n_sample = helper.count
            notes.append(
                "s^2 is the Rayleigh quotient of (1/n)sum_i (H_i - H)^2 at the top eigenvector "
                "of H: a lower bound of the true s^2, so SGD stability cannot be confirmed"
            )
        else:
            M = NonUniformityOperator(H)
            r = eigsh(M, k=1, which="LA", tol=tol, seed=seed)
            s2, s_kind, s_conv = max(float(r.eigenvalues[0]), 0.0), "exact", bool(r.converged[0])
            n_sample = M.helper.count
            if not s_conv:
                notes.append("eigsh did not converge on s^2 = lambda_max(M); s^2 is uncertain")
        sgd_lhs = (1.0 - lr * a) ** 2 + lr**2 * s2 * _sgd_factor(n, batch_size)
        if sgd_lhs > 1.0:
            sgd_stable = False
        elif s_kind == "exact":
            sgd_stable = True
    if batch_size is not None and not gd_stable:
        sgd_stable = False  # (1 - ηa)² > 1 already, whatever s²

    # ------------------------------------------------------------------ verdict
    words: list[str] = []
    if not is_minimum:
        words.append(
            f"Not a minimum (lambda_min = {lam_min:.3g} < 0): linear stability is defined for "
            "minima, so the following only describes the top curvature direction."
        )
    if not conv_max:
        words.append(
            f"Uncertain: lambda_max did not converge (residual {res_max:.2g}), so the GD "
            f"check (lr*lambda_max = {lr * a:.4g} vs 2) may be wrong."
        )
    gd_word = "GD-stable" if gd_stable else "GD-unstable"
    words.append(f"{gd_word} (lr*lambda_max = {lr * a:.4g} {'<=' if gd_stable else '>'} 2).")
    if batch_size is not None:
        if sgd_stable is False:
            words.append(f"SGD-unstable at B={batch_size}.")
        elif sgd_stable is True:
            words.append(f"SGD-stable at B={batch_size}.")
        elif s_kind == "lower bound":
            words.append(f"SGD at B={batch_size}: not shown unstable (s^2 is only a lower bound).")
        else:
            words.append(f"SGD at B={batch_size}: not checked (nonuniformity='none').")
    if not conv_min:
        notes.append(f"eigsh did not converge on lambda_min (residual {res_min:.2g})")

    return Stability(
        lr=lr,
        batch_size=batch_size,
        n=n,
        lambda_max=a,
        lambda_min=lam_min,
        lambda_max_residual=res_max,
        lambda_min_residual=res_min,
        lambda_max_converged=conv_max,
        lambda_min_converged=conv_min,
        is_minimum=is_minimum,
        gd_threshold=gd_threshold,
        gd_margin=gd_margin,
        gd_stable=gd_stable,
        s_squared=s2,
        s_kind=s_kind,
        s_squared_converged=s_conv,
        sgd_lhs=sgd_lhs,
        sgd_stable=sgd_stable,
        verdict=" ".join(words),
        n_matvecs=H.n_matvecs - start_matvecs,
        n_sample_hvps=n_sample,
        notes=tuple(notes),
    )


__all__: list[str] = ["NonUniformityOperator", "Stability", "per_sample_hvp", "stability"]
