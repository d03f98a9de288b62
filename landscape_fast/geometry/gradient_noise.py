r"""Gradient noise scale (McCandlish et al. 2018) and SGD noise levels from per-sample gradients.

With per-sample gradients :math:`g_i = \nabla\ell_i` over the :math:`N` samples of the data,
their mean :math:`\bar g = \nabla L` and the centred gradients :math:`c_i = g_i - \bar g`,

.. math::

    \operatorname{tr}\Sigma = \frac1N\sum_i \|c_i\|^2 ,\qquad
    B_\text{simple} = \frac{\operatorname{tr}\Sigma}{\|\bar g\|^2} ,\qquad
    B_\text{noise} = \frac{\operatorname{tr}(H\Sigma)}{\bar g^\top H \bar g} ,\qquad
    \operatorname{tr}(H\Sigma) = \frac1N\sum_i c_i^\top H c_i .

:math:`\operatorname{tr}\Sigma` is summed from centred per-sample gradients (batch means merged
with Chan's update), never as :math:`\frac1N\sum\|g_i\|^2 - \|\bar g\|^2`, which cancels when
:math:`\|\bar g\|` dominates. When every parameter belongs to an ``nn.Linear`` the per-sample
gradients are not formed at all: :math:`\|g_i\|^2` comes from the layer identities of
:mod:`~landscape_fast.operators.ghost_norms` in about one gradient's time, each batch is
centred as :math:`\sum_i\|g_i\|^2 - n_b\|\bar g_b\|^2`, and where that difference would lose
more than six digits (tr Σ ≪ the mean of :math:`\|g_i\|^2`) the pass is redone from centred
gradients (``per_sample="auto"``). :math:`\operatorname{tr}(H\Sigma)` is the mean of
:math:`c_i^\top H c_i` over ``curvature_samples`` samples drawn without replacement; its
standard error carries the finite-population correction,

.. math::

    \mathrm{SE} = \frac{s}{\sqrt m}\sqrt{1 - \frac mN}\,,

and it is exact (SE 0) when ``curvature_samples >= N``. :math:`\bar g^\top H\bar g` is one
exact Hessian-vector product; the SE of :math:`B_\text{noise}` is
:math:`\mathrm{SE}(\operatorname{tr} H\Sigma)/|\bar g^\top H\bar g|`.

For SGD with learning rate :math:`\eta` and batches of :math:`B` samples drawn without
replacement, the mini-batch gradient noise has covariance :math:`\frac{\Sigma}{B}\,\phi` with
:math:`\phi = \frac{N-B}{N-1}`. The stochastic modified equation (Li, Tai & E 2017) is
:math:`d\theta = -\nabla L\,dt + \sqrt{\eta\phi\Sigma/B}\,dW`; its diffusion per unit time has
trace :math:`\eta\phi\operatorname{tr}\Sigma/B` (``sde_noise_trace``). Only for isotropic,
constant noise :math:`\Sigma = sI` is the stationary law a Gibbs measure, with temperature
:math:`T = \eta\phi\operatorname{tr}\Sigma/(2pB)` (``temperature_isotropic``); real SGD noise
is anisotropic (:math:`\Sigma \approx cH` near minima) and its stationary law is not Gibbs.
The seed document's :math:`T_\text{eff} = \eta\operatorname{tr}\Sigma/B` is wrong by the
factor :math:`2p` and in its assumptions (THEORY.md, C3); it is kept only as
``document_temperature_invalid`` for comparison.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape_fast.geometry.gradient_noise import gradient_noise
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    >>> X, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    >>> r = gradient_noise(model, "ce", (X, y), lr=0.1, batch_size=8, curvature_samples=10)
    >>> r.n, r.p, r.tr_h_sigma.n_matvecs
    (40, 51, 11)
    >>> abs(r.b_simple - r.trace_cov / r.grad_norm_sq) < 1e-12
    True
    >>> r.fpc == (40 - 8) / 39 and r.document_temperature_invalid == 0.1 * r.trace_cov / 8
    True
    >>> r.describe().startswith("B_simple = ")
    True
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape_fast.data import select_batch
from landscape_fast.linalg.estimate import Estimate
from landscape_fast.operators.fisher import GradientCovariance
from landscape_fast.operators.ghost_norms import GhostNormUnsupported
from landscape_fast.operators.hessian import Hessian

__all__ = ["GradientNoise", "gradient_noise"]


@dataclass(frozen=True)
class GradientNoise:
    r"""Gradient noise statistics (see the module docstring for the formulas).

    Attributes:
        trace_cov: :math:`\operatorname{tr}\Sigma` (exact, from centred per-sample gradients).
        grad_norm_sq: :math:`\|\bar g\|^2` (exact).
        b_simple: :math:`\operatorname{tr}\Sigma/\|\bar g\|^2` (``nan`` if :math:`\bar g = 0`).
        gHg: :math:`\bar g^\top H\bar g` (exact; ``nan`` when ``curvature_samples=0``).
        tr_h_sigma: :math:`\operatorname{tr}(H\Sigma)` as an :class:`Estimate` (exact with
            SE 0 when every sample was used; ``None`` when ``curvature_samples=0``).
        b_noise: :math:`\operatorname{tr}(H\Sigma)/\bar g^\top H\bar g` (``nan`` when
            :math:`\bar g^\top H\bar g \le 0`, where it is undefined, or not computed).
        b_noise_stderr: Its standard error (delta method; 0 when exact).
        lr, batch_size: The SGD settings (``None`` if not given).
        fpc: :math:`(N-B)/(N-1)`, the without-replacement factor on :math:`\Sigma/B`.
        sde_noise_trace: :math:`\eta\,\phi\operatorname{tr}\Sigma/B`, trace of the SME
            diffusion per unit time.
        temperature_isotropic: :math:`\eta\,\phi\operatorname{tr}\Sigma/(2pB)`; a Gibbs
            temperature only if the noise were isotropic and constant, which it is not in
            general.
        document_temperature_invalid: :math:`\eta\operatorname{tr}\Sigma/B`, the seed
            document's :math:`T_\text{eff}`: wrong by a factor :math:`2p` and in its
            assumptions (THEORY.md C3); kept for comparison only.
        n: Number of samples :math:`N`.
        p: Number of parameters.
        seed: Seed of the curvature-sample draw.
        n_matvecs: Hessian-vector products spent (:math:`m + 1`, or 0).
        seconds: Wall time of the call.
        notes: Anything the user should know.
        per_sample: How :math:`\operatorname{tr}\Sigma` was summed (``"norms"``: the
            ``nn.Linear`` norm identities; ``"vmap"``: centred per-sample gradients).
    """

    trace_cov: float
    grad_norm_sq: float
    b_simple: float
    gHg: float
    tr_h_sigma: Estimate | None
    b_noise: float
    b_noise_stderr: float
    lr: float | None
    batch_size: int | None
    fpc: float | None
    sde_noise_trace: float | None
    temperature_isotropic: float | None
    document_temperature_invalid: float | None
    n: int
    p: int
    seed: int
    n_matvecs: int
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    per_sample: str = "vmap"

    def describe(self) -> str:
        """One line with the noise scales and how they were obtained."""
        out = (
            f"B_simple = {self.b_simple:.4g} (tr Σ = {self.trace_cov:.4g}, "
            f"|ḡ|² = {self.grad_norm_sq:.4g}, N = {self.n} samples, p = {self.p} parameters)"
        )
        est = self.tr_h_sigma
        if est is None:
            out += "; B_noise not computed (curvature_samples=0)"
        else:
            m = est.samples.numel() if est.samples is not None else 0
            if math.isnan(self.b_noise):
                out += f"; B_noise undefined (ḡᵀHḡ = {self.gHg:.4g} ≤ 0)"
            elif est.stderr == 0:
                out += f"; B_noise = {self.b_noise:.4g} (exact, all {m} samples"
            else:
                out += (
                    f"; B_noise = {self.b_noise:.4g} ± {self.b_noise_stderr:.2g} (1 SE, {m} of "
                    f"{self.n} curvature samples without replacement, seed {self.seed}"
                )
            if not math.isnan(self.b_noise):
                out += f"; tr HΣ = {float(est.value):.4g}, ḡᵀHḡ = {self.gHg:.4g})"
        if self.lr is not None:
            out += (
                f"; SGD η = {self.lr:g}, B = {self.batch_size}: SME noise trace "
                f"η·trΣ/B·(N−B)/(N−1) = {self.sde_noise_trace:.4g}, isotropic-Gibbs T = "
                f"{self.temperature_isotropic:.4g}"
            )
        return out


def _check_sgd(lr: float | None, batch_size: int | None) -> None:
    if (lr is None) != (batch_size is None):
        raise ValueError(
            "give both lr= and batch_size= (the SGD learning rate and mini-batch size) for the "
            "SGD noise levels, or neither"
        )
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _check_batch_vs_n(batch_size: int | None, n: int) -> None:
    if batch_size is not None and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {n} samples of the data: the SGD mini-batch "
            "must be drawn from the data set; pass a batch_size <= N"
        )


def _pass_gradients(
    S: GradientCovariance, chosen: torch.Tensor, p: int
) -> tuple[torch.Tensor, float, int, torch.Tensor]:
    """One streaming pass of per-sample gradients: ``(mean, Σ‖c_i‖², N, chosen rows)``.

    Each batch is centred on its own mean (in place, in the compute dtype), and the batch
    means and centred sums of squares are merged in float64 (Chan et al.): no N × p matrix is
    kept and nothing cancels.
    """
    f64 = torch.float64
    rows = torch.empty(len(chosen), p, dtype=f64, device=S.device)
    mean = torch.zeros(p, dtype=f64, device=S.device)
    m2, total, filled = 0.0, 0, 0
    for _, G in S.stream_per_sample_gradients():  # fresh tensors: centred in place below
        nb = G.shape[0]
        local = _chosen_in(chosen, total, nb)
        if len(local):  # curvature samples of this batch, uncentred
            rows[filled : filled + len(local)] = G[local.to(S.device)]
            filled += len(local)
        mb = torch.ones(nb, dtype=G.dtype, device=G.device) @ G / nb
        G.sub_(mb)
        m2b = float(torch.linalg.vector_norm(G, dim=1).to(f64).square().sum())
        m2, total = _chan_merge(mean, m2, total, mb.to(f64), m2b, nb)
    return mean, m2, total, rows


def _pass_norms(
    S: GradientCovariance, chosen: torch.Tensor, p: int
) -> tuple[torch.Tensor, float, int, torch.Tensor, float]:
    """The same from per-sample squared norms (no per-sample gradients but for the chosen
    rows), plus ``Σ‖g_i‖²`` for the cancellation check."""
    f64 = torch.float64
    rows = torch.empty(len(chosen), p, dtype=f64, device=S.device)
    mean = torch.zeros(p, dtype=f64, device=S.device)
    m2, total, filled, squares = 0.0, 0, 0, 0.0
    for index, batch, sq, mb in S.stream_per_sample_norms():
        nb = sq.shape[0]
        local = _chosen_in(chosen, total, nb)
        if len(local):
            sub = select_batch(batch, local)
            rows[filled : filled + len(local)] = S._compute_per_sample_gradients(index, sub)
            filled += len(local)
        mb = mb.to(f64)
        sum_sq = float(sq.sum())
        m2b = max(sum_sq - nb * float(mb @ mb), 0.0)
        squares += sum_sq
        m2, total = _chan_merge(mean, m2, total, mb, m2b, nb)
    return mean, m2, total, rows, squares


def _chosen_in(chosen: torch.Tensor, start: int, nb: int) -> torch.Tensor:
    """Positions within the batch ``start:start+nb`` of the sorted sample indices ``chosen``."""
    lo = int(torch.searchsorted(chosen, start))
    hi = int(torch.searchsorted(chosen, start + nb))
    return chosen[lo:hi] - start


def _chan_merge(
    mean: torch.Tensor, m2: float, total: int, mb: torch.Tensor, m2b: float, nb: int
) -> tuple[float, int]:
    """Merge a batch (mean ``mb``, centred sum of squares ``m2b``, ``nb`` samples) into the
    running ``mean`` (updated in place) and ``m2``; returns the new ``(m2, total)``."""
    delta = mb - mean
    new = total + nb
    mean.add_(delta, alpha=nb / new)
    return m2 + m2b + float(delta @ delta) * total * nb / new, new


def gradient_noise(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    params: Any = None,
    curvature_samples: int = 64,
    seed: int = 0,
    batch_norm: str = "eval",
    memory_budget: int | None = None,
    dtype: torch.dtype | None = None,
    hvp: str = "auto",
    per_sample: str = "auto",
) -> GradientNoise:
    r"""Gradient noise scales and SGD noise levels over a data set (see the module docstring).

    Args:
        model, loss_fn, data, params: As for :class:`~landscape_fast.Hessian`; the loss must be
            mean-reduced with a per-sample meaning (checked). ``data`` may be a list of
            batches; per-sample gradients are chunked to ``memory_budget``.
        lr: SGD learning rate :math:`\eta` (with ``batch_size``) for the SGD noise levels.
        batch_size: SGD mini-batch size :math:`B`, ``1 <= B <= N`` (not a data split).
        curvature_samples: Samples :math:`m` for :math:`\operatorname{tr}(H\Sigma)` (drawn
            without replacement; all of them, exactly, when :math:`m \ge N`; 0 skips
            :math:`B_\text{noise}` and the Hessian).
        seed: Seed of that draw.
        batch_norm: ``"eval"``; ``"batch"`` is refused (no per-sample gradients).
        memory_budget, dtype: See :class:`~landscape_fast.operators.model_operator.ModelOperator`.
        hvp: Hessian-vector product engine (see :class:`~landscape_fast.Hessian`).
        per_sample: How :math:`\operatorname{tr}\Sigma` is summed: ``"norms"`` from the
            per-sample norm identities of :mod:`~landscape_fast.operators.ghost_norms`
            (about one gradient's cost; every selected parameter must belong to an
            ``nn.Linear``), ``"vmap"`` from centred per-sample gradients (any model), or
            ``"auto"``: norms where they apply and do not cancel, else vmap.

    Returns:
        A :class:`GradientNoise`. The model is left exactly as it was.

    Raises:
        ValueError: Empty data, BatchNorm in batch mode, a loss that is not a mean of
            per-sample losses, bad ``lr`` / ``batch_size`` / ``curvature_samples``.
        FloatingPointError: A non-finite loss or gradient.
    """
    start = time.perf_counter()
    _check_sgd(lr, batch_size)
    if isinstance(curvature_samples, bool) or not isinstance(curvature_samples, int):
        raise ValueError(f"curvature_samples must be an integer, got {curvature_samples!r}")
    if per_sample not in ("auto", "norms", "vmap"):
        raise ValueError(f"per_sample must be 'auto', 'norms' or 'vmap', got {per_sample!r}")
    if curvature_samples < 0:
        raise ValueError(
            f"curvature_samples must be >= 0 (0 skips B_noise), got {curvature_samples}"
        )
    S = GradientCovariance(
        model,
        loss_fn,
        data,
        params,
        batch_norm=batch_norm,
        dtype=dtype,
        memory_budget=memory_budget,
    )
    N = S.data.num_samples
    _check_batch_vs_n(batch_size, N)
    p = S.shape[0]
    m = min(curvature_samples, N)
    gen = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(N, generator=gen)[:m].sort().values if m < N else torch.arange(N)

    use_norms = per_sample == "norms" or (per_sample == "auto" and S.ghost_plan()[0] is not None)
    notes: list[str] = []
    if use_norms:
        try:
            mean, m2, total, rows, squares = _pass_norms(S, chosen, p)
        except GhostNormUnsupported as err:
            if per_sample == "norms":
                raise
            notes.append(f"per-sample norms do not apply ({err}): used per-sample gradients")
            use_norms, squares, m2 = False, 0.0, 0.0
    if use_norms:
        # The within-batch centring sum(‖g_i‖²) − n_b‖ḡ_b‖² cancels when the mean dominates:
        # its rounding error is about eps·sum(‖g_i‖²). Redo from centred gradients if that
        # would exceed 1e-6 of the answer.
        eps = torch.finfo(S.compute_dtype).eps
        if not eps * squares <= 1e-6 * m2:
            lost = "recomputed from centred per-sample gradients"
            if per_sample == "norms":
                lost = f"relative rounding error up to {eps * squares / max(m2, 1e-300):.1g}"
            notes.append(f"per-sample norms cancelled (tr Σ ≪ mean of ‖g_i‖²): {lost}")
            use_norms = per_sample == "norms"
    if not use_norms:
        mean, m2, total, rows = _pass_gradients(S, chosen, p)
    f64 = torch.float64
    if total != N:  # pragma: no cover - DataSource checks the data does not change
        raise ValueError(f"the data changed: {N} samples counted, {total} in the gradient pass")
    trace_cov = m2 / N
    grad_norm_sq = float(mean @ mean)
    if grad_norm_sq > 0:
        b_simple = trace_cov / grad_norm_sq
    else:
        b_simple = math.nan
        notes.append("the mean gradient is zero: B_simple (and B_noise) are undefined (nan)")
    if N == 1:
        notes.append("one sample: Σ = 0 and the noise scales are 0 or undefined")

    gHg, tr_est, b_noise, b_se, n_matvecs = math.nan, None, math.nan, math.nan, 0
    if m > 0:
        H = Hessian(
            model, loss_fn, S.data, S.space, hvp=hvp, batch_norm=batch_norm, dtype=dtype,
            memory_budget=memory_budget,
        )  # fmt: skip
        C = rows - mean  # centred, float64
        V = torch.cat([mean[None], C]).to(H.dtype)
        HV = H.matmat(V).to(f64)
        n_matvecs = H.n_matvecs
        gHg = float(mean @ HV[0])
        x = (C * HV[1:]).sum(1).cpu()
        info = dict(n_matvecs=n_matvecs, quantity="tr(H Sigma)", seed=int(seed))
        if m == N:
            tr_est = Estimate(value=float(x.mean()), stderr=0.0, samples=x, method="exact", **info)
        else:
            est = Estimate.from_samples(x, method="sampling without replacement", **info)
            tr_est = dataclasses.replace(est, stderr=est.stderr * math.sqrt(1.0 - m / N))
        if gHg > 0:
            b_noise = float(tr_est.value) / gHg
            b_se = float(tr_est.stderr) / abs(gHg)
        else:
            notes.append(
                f"ḡᵀHḡ = {gHg:.4g} ≤ 0 (negative curvature along the gradient): B_noise is "
                "undefined (nan)"
            )

    fpc = sde = t_iso = t_doc = None
    if lr is not None and batch_size is not None:
        fpc = (N - batch_size) / (N - 1) if N > 1 else 0.0
        sde = lr * trace_cov / batch_size * fpc
        t_iso = lr * trace_cov / (2 * p * batch_size) * fpc
        t_doc = lr * trace_cov / batch_size
    return GradientNoise(
        trace_cov=trace_cov,
        grad_norm_sq=grad_norm_sq,
        b_simple=b_simple,
        gHg=gHg,
        tr_h_sigma=tr_est,
        b_noise=b_noise,
        b_noise_stderr=b_se,
        lr=None if lr is None else float(lr),
        batch_size=batch_size,
        fpc=fpc,
        sde_noise_trace=sde,
        temperature_isotropic=t_iso,
        document_temperature_invalid=t_doc,
        n=N,
        p=p,
        seed=int(seed),
        n_matvecs=n_matvecs,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
        per_sample="norms" if use_norms else "vmap",
    )
