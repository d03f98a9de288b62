r"""PAC-Bayes generalization bounds and the PAC-Bayes flatness measure.

**The computable bound** (Langford–Seeger / Maurer; THEORY.md §3 item 7). For a loss in
:math:`[0, 1]` (by default the 0-1 error), a prior :math:`P` fixed before seeing the training
set :math:`S` of :math:`n` samples and any posterior :math:`Q`, with probability at least
:math:`1-\delta` over :math:`S`,

.. math::

    \mathrm{kl}\big(\hat e(Q)\,\big\|\,e(Q)\big) \le
    \frac{\mathrm{KL}(Q\|P) + \ln(2\sqrt n/\delta)}{n},
    \qquad \mathrm{kl}(q\|p) = q\ln\frac qp + (1-q)\ln\frac{1-q}{1-p},

so :math:`e(Q) \le \mathrm{kl}^{-1}(\hat e(Q), [\mathrm{KL} + \ln(2\sqrt n/\delta)]/n)`
(:func:`kl_inverse_upper`). Pinsker's inequality gives McAllester's weaker form
:math:`e(Q) \le \hat e(Q) + \sqrt{[\mathrm{KL} + \ln(2\sqrt n/\delta)]/(2n)}`.

Here :math:`Q = N(\theta, \sigma^2 I)` around the trained parameters and
:math:`P = N(\theta_0, \sigma^2 I)` around the **initialization** :math:`\theta_0` (data
independent), so

.. math::

    \mathrm{KL}(Q\|P) = \frac{\lVert\theta - \theta_0\rVert^2}{2\sigma^2}.

The variance :math:`\sigma^2 = \lambda_j = c\,e^{-j/b}` (:math:`c = 0.1`, :math:`b = 100`,
:math:`j \ge 1`, Dziugaite & Roy 2017) is chosen after seeing the data, which is paid for
by a union bound: the bound for :math:`\lambda_j` is computed at confidence
:math:`\delta_j = 6\delta/(\pi^2 j^2)` (:math:`\sum_j \delta_j = \delta`), so the minimum
over the grid holds with probability :math:`1 - \delta`.

The stochastic training error :math:`\hat e(Q)` is estimated with :math:`M` Monte-Carlo
draws :math:`\theta + \sigma\xi_k`, :math:`\xi_k \sim N(0, I)`, and certified by
:math:`\hat e(Q) \le \mathrm{kl}^{-1}(\hat e_M, \ln(2/\delta'_j)/M)` with
:math:`\delta'_j = 6\delta'/(\pi^2 j^2)` (the same union bound over the grid, because the
best :math:`\sigma` is picked with these estimates). The total confidence is
:math:`1 - \delta - \delta'`.

The bound is on the **stochastic** classifier :math:`Q`, not on the deterministic network
:math:`\theta`. Without optimizing :math:`Q` (Dziugaite & Roy 2017) it is usually vacuous
for networks trained far from their initialization.

**What is not a bound.** The seed document's "Theorem 2.2"
(:func:`document_theorem_2_2_invalid`) uses a prior centred at the learned :math:`\theta`
and a wrong KL; it is refuted by random labels (THEORY.md, claim C4).

**Flatness** (Jiang et al. 2020, "Fantastic generalization measures", *pacbayes.flatness*):
:func:`pac_bayes_flatness` finds the largest :math:`\sigma'` whose perturbed training error
exceeds the unperturbed one by at most a target deviation and reports
:math:`1/\sigma'^2`. It is a flatness *measure*, not a bound.

Example:
    >>> round(kl_inverse_upper(0.0, math.log(2)), 12)
    0.5
    >>> kl_inverse_upper(0.3, 0.0)
    0.3
    >>> round(document_theorem_2_2_invalid(rho=0.05, num_params=9000, n=1000), 3)
    0.113
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from landscape_fast.data import is_pair
from landscape_fast.operators.model_operator import ModelOperator
from landscape_fast.params import ParamSelection

ErrorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

GRID_C = 0.1
GRID_B = 100.0
DEFAULT_GRID_J: tuple[int, ...] = tuple(
    max(1, round(GRID_B * math.log(GRID_C / s**2)))
    for s in (10.0 ** (-0.5 - 0.25 * k) for k in range(15))
)
"""Default grid indices: :math:`\\sigma` from :math:`10^{-0.5}` to :math:`10^{-4}` in
quarter decades (:math:`\\sigma_j^2 = c\\,e^{-j/b}`)."""


# ---------------------------------------------------------------------- kl and its inverse
def kl_bernoulli(q: float, p: float) -> float:
    r"""Bernoulli KL divergence :math:`\mathrm{kl}(q\|p)` (with :math:`0\ln 0 = 0`).

    .. math::

        \mathrm{kl}(q\|p) = q\ln\frac qp + (1-q)\ln\frac{1-q}{1-p}

    Returns ``inf`` when :math:`p \in \{0, 1\}` and :math:`q \ne p`.

    Example:
        >>> kl_bernoulli(0.5, 0.5)
        0.0
        >>> round(kl_bernoulli(0.0, 0.5), 6) == round(math.log(2), 6)
        True
    """
    q, p = float(q), float(p)
    if not (0.0 <= q <= 1.0 and 0.0 <= p <= 1.0):
        raise ValueError(f"kl_bernoulli needs q, p in [0, 1], got q={q}, p={p}")
    out = 0.0
    if q > 0.0:
        if p == 0.0:
            return math.inf
        out += q * math.log(q / p)
    if q < 1.0:
        if p == 1.0:
            return math.inf
        out += (1.0 - q) * math.log((1.0 - q) / (1.0 - p))
    return max(out, 0.0)


def kl_inverse_upper(q: float, c: float, tol: float = 1e-12) -> float:
    r"""The largest :math:`p \in [q, 1]` with :math:`\mathrm{kl}(q\|p) \le c`.

    Exact for :math:`c = 0` (:math:`p = q`), :math:`q = 1` (:math:`p = 1`) and
    :math:`q = 0` (:math:`p = 1 - e^{-c}`); otherwise bisection to ``tol``, returning the
    upper end of the final bracket (never below the true inverse).

    Example:
        >>> kl_inverse_upper(1.0, 3.0)
        1.0
        >>> p = kl_inverse_upper(0.1, 0.05)
        >>> abs(kl_bernoulli(0.1, p) - 0.05) < 1e-9
        True
    """
    q, c = float(q), float(c)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"kl_inverse_upper: q must be in [0, 1], got {q}")
    if not c >= 0.0:  # also rejects NaN
        raise ValueError(f"kl_inverse_upper: c must be >= 0, got {c}")
    if c == 0.0 or q == 1.0:
        return q
    if math.isinf(c):
        return 1.0
    if q == 0.0:
        return min(1.0, -math.expm1(-c))
    lo, hi = q, 1.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if kl_bernoulli(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return hi


def sigma_grid(j: int, c: float = GRID_C, b: float = GRID_B) -> float:
    r""":math:`\sigma_j = \sqrt{c\,e^{-j/b}}` (Dziugaite–Roy grid :math:`\lambda_j = c e^{-j/b}`).

    Example:
        >>> round(sigma_grid(1), 6)
        0.314651
    """
    if int(j) != j or j < 1:
        raise ValueError(f"grid index j must be a positive integer, got {j}")
    return math.sqrt(c * math.exp(-j / b))


def union_delta(delta: float, j: int) -> float:
    r""":math:`\delta_j = 6\delta/(\pi^2 j^2)`; they sum to :math:`\delta` over :math:`j \ge 1`."""
    return 6.0 * delta / (math.pi**2 * j**2)


# ---------------------------------------------------------------------- error functions
def zero_one_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample 0-1 classification error: ``argmax(outputs) != targets`` as 0./1.

    Accepts class-index targets ``(N,)`` or one-hot / probability targets ``(N, C)``; a
    single-logit output ``(N,)``/``(N, 1)`` is thresholded at 0 (binary classification).
    """
    if outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1):
        pred = (outputs.reshape(-1) > 0).long()
    else:
        pred = outputs.argmax(dim=-1).reshape(-1)
    t = targets
    if t.dim() == outputs.dim() and t.dim() >= 2 and t.shape[-1] == outputs.shape[-1] > 1:
        t = t.argmax(dim=-1)
    t = t.reshape(-1).long()
    return (pred != t).to(torch.float64)


class _Evaluator:
    """Mean per-sample error of a model at shifted parameters (``functional_call``)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        data: Any,
        error_fn: ErrorFn | None,
        params: ParamSelection,
        batch_norm: str,
        bounded: bool,
    ) -> None:
        self.op = ModelOperator(
            model, "ce" if loss_fn is None else loss_fn, data, params, batch_norm=batch_norm
        )
        self.error_fn = error_fn or zero_one_error
        self.bounded = bounded
        self.space = self.op.space
        self.n = self.op.data.num_samples  # ValueError on empty data
        if self.n <= 0:  # pragma: no cover - DataSource raises first
            raise ValueError("the training data has n = 0 samples; a bound needs n >= 1")
        self.theta = self.space.flatten(dtype=torch.float64)
        self.passes = 0

    def mean_error(self, shift: torch.Tensor | None) -> float:
        """Mean error over the data at :math:`\\theta + \\text{shift}` (float64 shift)."""
        op = self.op
        flat = self.theta if shift is None else self.theta + shift
        flat = flat.to(device=self.space.device, dtype=op.compute_dtype)
        theta = self.space.views(flat)
        total, count = 0.0, 0
        with torch.no_grad(), op.semantics() as sem:
            for index, batch, nb in op.batches(sem):
                if nb == 0:
                    continue
                if not is_pair(batch):
                    raise ValueError(
                        "PAC-Bayes needs (inputs, targets) batches so that error_fn(outputs, "
                        f"targets) can be evaluated; batch {index} is a "
                        f"{type(batch).__name__}"
                    )
                errs = self.error_fn(op.f.outputs(theta, batch), batch[1])
                errs = torch.as_tensor(errs).detach().to(torch.float64)
                if errs.numel() not in (1, nb):
                    raise ValueError(
                        f"error_fn must return one error per sample ({nb}) or the batch mean, "
                        f"got {errs.numel()} values"
                    )
                if not bool(torch.isfinite(errs).all()):
                    raise ValueError(f"error_fn returned a non-finite value on batch {index}")
                if self.bounded:
                    lo, hi = float(errs.min()), float(errs.max())
                    if lo < 0.0 or hi > 1.0:
                        raise ValueError(
                            f"error_fn returned values in [{lo:.4g}, {hi:.4g}], outside [0, 1]. "
                            "The PAC-Bayes-kl bound holds only for a loss bounded in [0, 1] "
                            "(e.g. the 0-1 error); an unbounded loss such as cross-entropy "
                            "has no such bound. Pass error_fn=None (the default 0-1 error) "
                            "or a per-sample loss with values in [0, 1]."
                        )
                total += float(errs.sum()) if errs.numel() == nb else float(errs) * nb
                count += nb
        self.passes += 1
        return total / count

    def init_vector(self, init_params: Any) -> torch.Tensor:
        """:math:`\\theta_0` as a float64 flat vector matching the selected parameters."""
        space = self.space
        hint = (
            "pass theta_0 as a flat tensor of the selected parameters, the model's "
            "state_dict() saved at initialization, or a deep copy of the model made before "
            "training (copy.deepcopy(model))"
        )
        if isinstance(init_params, nn.Module):
            init_params = dict(init_params.named_parameters())
        if isinstance(init_params, torch.Tensor):
            t = init_params.detach().reshape(-1) if init_params.dim() == 1 else None
            if t is None or t.numel() != space.numel:
                raise ValueError(
                    f"init_params has shape {tuple(init_params.shape)} but the model has "
                    f"{space.numel} selected parameters (a ({space.numel},) vector is "
                    f"needed); {hint}"
                )
            return t.to(device=space.device, dtype=torch.float64)
        if isinstance(init_params, Mapping):
            missing = [n for n in space.names if n not in init_params]
            if missing:
                raise ValueError(
                    f"init_params lacks the parameters {missing[:5]}"
                    f"{' ...' if len(missing) > 5 else ''}; {hint}"
                )
            bad = [
                (n, tuple(torch.as_tensor(init_params[n]).shape), tuple(s))
                for n, s in zip(space.names, space.shapes)
                if tuple(torch.as_tensor(init_params[n]).shape) != tuple(s)
            ]
            if bad:
                raise ValueError(
                    f"init_params shapes differ from the model's (name, given, expected): "
                    f"{bad[:5]}; {hint}"
                )
            return space.flatten(
                [torch.as_tensor(init_params[n]).detach() for n in space.names],
                dtype=torch.float64,
            )
        raise ValueError(
            f"init_params must be a tensor, a state_dict or an nn.Module, got "
            f"{type(init_params).__name__}; {hint}"
        )


# ---------------------------------------------------------------------- the bound
@dataclass(frozen=True)
class SigmaRow:
    """One grid point of :func:`pac_bayes_bound` (all quantities at this :math:`\\sigma`)."""

    j: int | None
    sigma: float
    kl: float
    delta_j: float
    delta_mc_j: float
    mc_error: float
    mc_error_upper: float
    bound: float
    mcallester: float


@dataclass(frozen=True)
class PacBayesBound:
    """Result of :func:`pac_bayes_bound` (see the module docstring for the math).

    Attributes:
        bound: :math:`e(Q) \\le` this with probability :math:`\\ge` ``confidence`` (the
            kl-inverse bound at the best :math:`\\sigma`; capped at 1 by construction).
        mcallester: The Pinsker / McAllester form at the same :math:`\\sigma` (may exceed 1).
        sigma: The chosen :math:`\\sigma` (posterior and prior standard deviation).
        j: Its grid index (``None`` for a user list, where the position counts).
        kl: :math:`\\lVert\\theta-\\theta_0\\rVert^2/(2\\sigma^2)`.
        distance: :math:`\\lVert\\theta-\\theta_0\\rVert`.
        mc_error: :math:`\\hat e_M`, the Monte-Carlo perturbed training error.
        mc_error_upper: Its certified upper bound :math:`\\mathrm{kl}^{-1}(\\hat e_M,
            \\ln(2/\\delta'_j)/M)`.
        train_error: Error of the unperturbed network :math:`\\theta` on the training data.
        n, num_params: Training samples, selected parameters.
        delta, delta_mc, confidence: :math:`\\delta`, :math:`\\delta'` and
            :math:`1-\\delta-\\delta'`.
        mc_samples, seed: Monte-Carlo draws per :math:`\\sigma` and the seed.
        vacuous: The bound is at least 1 (or no better than chance, see ``notes``).
        rows: Every evaluated grid point.
        notes: Caveats.
    """

    bound: float
    mcallester: float
    sigma: float
    j: int | None
    kl: float
    distance: float
    mc_error: float
    mc_error_upper: float
    train_error: float
    n: int
    num_params: int
    delta: float
    delta_mc: float
    confidence: float
    mc_samples: int
    seed: int
    vacuous: bool
    rows: tuple[SigmaRow, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for a paper or a log."""
        return (
            f"PAC-Bayes-kl bound on the stochastic error e(Q) <= {self.bound:.4f} "
            f"(McAllester {self.mcallester:.4f}) with prob >= {self.confidence:.3g}: "
            f"sigma={self.sigma:.3g}, KL={self.kl:.4g}, MC train error {self.mc_error:.4f} "
            f"(certified <= {self.mc_error_upper:.4f}, M={self.mc_samples}), "
            f"train error {self.train_error:.4f}, n={self.n}, p={self.num_params}"
            + (" [vacuous]" if self.vacuous else "")
        )


def _check_prob(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def pac_bayes_bound(
    model: nn.Module,
    loss_fn: Any,
    train_data: Any,
    init_params: Any,
    delta: float = 0.05,
    *,
    error_fn: ErrorFn | None = None,
    sigmas: Sequence[float] | None = None,
    mc_samples: int = 100,
    delta_mc: float = 0.01,
    seed: int = 0,
    batch_norm: str = "eval",
    params: ParamSelection = None,
) -> PacBayesBound:
    r"""PAC-Bayes-kl bound on the error of :math:`Q = N(\theta, \sigma^2 I)`, prior at init.

    With probability at least :math:`1 - \delta - \delta'` over the training sample,

    .. math::

        e(Q_{\sigma^*}) \le \min_j \mathrm{kl}^{-1}\Big(
            \mathrm{kl}^{-1}\big(\hat e_M(\sigma_j), \tfrac{\ln(2/\delta'_j)}{M}\big),\;
            \frac{\lVert\theta-\theta_0\rVert^2/(2\sigma_j^2) + \ln(2\sqrt n/\delta_j)}{n}
        \Big),

    :math:`\delta_j = 6\delta/(\pi^2 j^2)`, :math:`\delta'_j = 6\delta'/(\pi^2 j^2)`.

    Args:
        model: The trained network (:math:`\theta`); never modified.
        loss_fn: The training loss (used only to set up the model function; the bound is on
            ``error_fn``). ``None`` is allowed.
        train_data: The training set the network was trained on: ``(inputs, targets)`` or a
            re-iterable of such batches.
        init_params: :math:`\theta_0`: a flat tensor of the selected parameters, a
            state_dict or a copy of the model at initialization.
        delta: Confidence parameter :math:`\delta` of the PAC-Bayes bound.
        error_fn: ``error_fn(outputs, targets)`` giving per-sample errors in :math:`[0, 1]`
            (default: :func:`zero_one_error`). Values outside :math:`[0,1]` raise.
        sigmas: A list of :math:`\sigma` values fixed **before** seeing the data (the
            :math:`k`-th pays :math:`\delta_k` with :math:`k` its 1-based position); default
            the grid :data:`DEFAULT_GRID_J` of :math:`\sigma_j^2 = 0.1\,e^{-j/100}`.
        mc_samples: Monte-Carlo draws :math:`M` per :math:`\sigma` (the same seeded draws
            :math:`\xi_k` are reused for every :math:`\sigma`).
        delta_mc: Confidence parameter :math:`\delta'` of the Monte-Carlo certificate.
        seed: Seed of the draws.
        batch_norm, params: As for the curvature operators.

    Returns:
        :class:`PacBayesBound`. Cost: ``mc_samples × len(grid) + 1`` passes over the data.

    Raises:
        ValueError: Empty data, bad ``delta``/``delta_mc``/``mc_samples``/``sigmas``,
            ``init_params`` not matching the model, or an ``error_fn`` outside
            :math:`[0, 1]`.

    Example:
        >>> import copy
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(100, 2); y = (X[:, 0] > 0).long()
        >>> model = nn.Linear(2, 2); init = copy.deepcopy(model)
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]))
        >>> r = pac_bayes_bound(model, "ce", (X, y), init, mc_samples=20)
        >>> 0.0 < r.bound < 1.0, r.confidence
        (True, 0.94)
    """
    delta = _check_prob("delta", delta)
    delta_mc = _check_prob("delta_mc", delta_mc)
    if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive integer, got {mc_samples}")
    mc_samples = int(mc_samples)
    if sigmas is None:
        grid: list[tuple[int | None, int, float]] = [(j, j, sigma_grid(j)) for j in DEFAULT_GRID_J]
    else:
        sig = [float(s) for s in sigmas]
        if not sig or not all(s > 0 and math.isfinite(s) for s in sig):
            raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {sigmas}")
        grid = [(None, k + 1, s) for k, s in enumerate(sig)]

    ev = _Evaluator(model, loss_fn, train_data, error_fn, params, batch_norm, bounded=True)
    theta0 = ev.init_vector(init_params)
    n, p = ev.n, ev.space.numel
    dist2 = float((ev.theta - theta0).square().sum())
    train_error = ev.mean_error(None)
    log_term = math.log(2.0 * math.sqrt(n))

    rows: list[SigmaRow] = []
    for j, weight_index, sigma in grid:
        d_j = union_delta(delta, weight_index)
        dmc_j = union_delta(delta_mc, weight_index)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        acc = 0.0
        for _ in range(mc_samples):
            xi = torch.randn(p, generator=gen, dtype=torch.float64).to(ev.space.device)
            acc += ev.mean_error(xi.mul_(sigma))
        e_m = min(max(acc / mc_samples, 0.0), 1.0)
        e_up = kl_inverse_upper(e_m, math.log(2.0 / dmc_j) / mc_samples)
        kl = dist2 / (2.0 * sigma**2)
        rhs = (kl + log_term - math.log(d_j)) / n
        rows.append(
            SigmaRow(
                j=j,
                sigma=sigma,
                kl=kl,
                delta_j=d_j,
                delta_mc_j=dmc_j,
                mc_error=e_m,
                mc_error_upper=e_up,
                bound=kl_inverse_upper(e_up, rhs),
                mcallester=e_up + math.sqrt(rhs / 2.0),
            )
        )
    best = min(rows, key=lambda r: (r.bound, r.mcallester))

    notes: list[str] = [
        "the bound is on the stochastic classifier Q = N(theta, sigma^2 I), not on the "
        "deterministic network theta"
    ]
    vacuous = best.bound >= 1.0 - 1e-9
    if vacuous:
        notes.append(
            f"vacuous: the bound is 1 (KL = {best.kl:.4g} at the best sigma vs n = {n}); the "
            f"network moved too far from its initialization (||theta - theta0|| = "
            f"{math.sqrt(dist2):.4g}) for this little data, or the perturbed error is too high"
        )
    elif best.bound >= 0.5:
        notes.append(
            f"the bound {best.bound:.3g} is >= 0.5: no better than chance for binary tasks; "
            "more data, a posterior optimized on the bound (Dziugaite & Roy 2017) or a "
            "data-dependent prior is needed for a non-trivial certificate"
        )
    floor = kl_inverse_upper(0.0, (log_term - math.log(best.delta_j)) / n)
    if floor > 0.1:
        notes.append(
            f"n = {n} is small for confidence 1 - {delta:g}: even a zero error with KL = 0 "
            f"would only certify e(Q) <= {floor:.3g}"
        )
    if best.mc_error_upper - best.mc_error > 0.05:
        notes.append(
            f"the Monte-Carlo certificate costs {best.mc_error_upper - best.mc_error:.3g} "
            f"(M = {mc_samples}); more mc_samples tighten it (its slack shrinks like 1/sqrt(M))"
        )
    if best is rows[0] or best is rows[-1]:
        notes.append("the best sigma is at the edge of the grid; a wider grid may help")
    return PacBayesBound(
        bound=best.bound,
        mcallester=best.mcallester,
        sigma=best.sigma,
        j=best.j,
        kl=best.kl,
        distance=math.sqrt(dist2),
        mc_error=best.mc_error,
        mc_error_upper=best.mc_error_upper,
        train_error=train_error,
        n=n,
        num_params=p,
        delta=delta,
        delta_mc=delta_mc,
        confidence=1.0 - delta - delta_mc,
        mc_samples=mc_samples,
        seed=int(seed),
        vacuous=vacuous,
        rows=tuple(rows),
        notes=tuple(notes),
    )


def document_theorem_2_2_invalid(rho: float, num_params: int, n: int, delta: float = 0.05) -> float:
    r"""The seed document's Theorem 2.2 right-hand side. **NOT a valid bound.**

    LANDSCAPE-THEORY.md §2.2 claims that at a :math:`\rho`-flat minimum
    (:math:`S_\rho(\theta) \le \rho`), with probability :math:`1-\delta`,

    .. math::

        |L_{\text{test}}(\theta) - L_{\text{train}}(\theta)| \le
        \sqrt{\frac{2\rho^2 + \ln(2p/\delta)}{n}} .

    This function returns that right-hand side, computed from the quantities it names
    (:math:`\rho`, :math:`p` = ``num_params``, :math:`n`, :math:`\delta`), only so that it
    can be compared with real generalization gaps. It is **not** a bound (THEORY.md, claim
    C4): its prior :math:`N(\theta, \rho^2 I)` depends on the learned :math:`\theta`, its KL
    is wrong, PAC-Bayes bounds the stochastic predictor for losses in :math:`[0, 1]` and not
    the deterministic :math:`L(\theta)`, and random labels violate it (RHS
    :math:`\approx 0.11` at :math:`p = 9000`, :math:`n = 1000`, while the gap is
    :math:`\approx 0.9`). Use :func:`pac_bayes_bound` for a valid certificate.

    Example:
        >>> round(document_theorem_2_2_invalid(0.0, 9000, 1000, 0.05), 4)
        0.1131
    """
    rho, delta = float(rho), float(delta)
    if n < 1 or num_params < 1:
        raise ValueError(f"n and num_params must be >= 1, got n={n}, num_params={num_params}")
    _check_prob("delta", delta)
    return math.sqrt((2.0 * rho**2 + math.log(2.0 * num_params / delta)) / n)


# ---------------------------------------------------------------------- Jiang flatness
@dataclass(frozen=True)
class PacBayesFlatness:
    """Result of :func:`pac_bayes_flatness` (a flatness measure, **not** a bound).

    Attributes:
        sigma: :math:`\\sigma'`, the largest :math:`\\sigma` found whose perturbed error
            exceeds ``base_error`` by at most ``target_deviation``.
        flatness: :math:`1/\\sigma'^2` (larger = sharper).
        base_error: Unperturbed training error.
        perturbed_error: Monte-Carlo perturbed error at :math:`\\sigma'`.
        target_deviation, magnitude_aware, epsilon, mc_samples, seed: Settings.
        bracketed: Whether the search found both sides of the threshold in its range.
        evaluations: Number of :math:`\\sigma` values tried.
        notes: Caveats.
    """

    sigma: float
    flatness: float
    base_error: float
    perturbed_error: float
    target_deviation: float
    magnitude_aware: bool
    epsilon: float
    mc_samples: int
    seed: int
    bracketed: bool
    evaluations: int
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for a paper or a log."""
        kind = "magnitude-aware " if self.magnitude_aware else ""
        return (
            f"{kind}PAC-Bayes flatness (Jiang et al. 2020; a measure, not a bound): "
            f"sigma'={self.sigma:.4g}, 1/sigma'^2={self.flatness:.4g} (error "
            f"{self.base_error:.4f} -> {self.perturbed_error:.4f}, target deviation "
            f"{self.target_deviation:g}, M={self.mc_samples})"
            + ("" if self.bracketed else " [not bracketed]")
        )


def pac_bayes_flatness(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    target_deviation: float = 0.1,
    magnitude_aware: bool = False,
    mc_samples: int = 20,
    seed: int = 0,
    error_fn: ErrorFn | None = None,
    sigma_range: tuple[float, float] = (1e-5, 10.0),
    iterations: int = 25,
    epsilon: float = 1e-3,
    batch_norm: str = "eval",
    params: ParamSelection = None,
) -> PacBayesFlatness:
    r"""Jiang et al. (2020) *pacbayes.flatness*: :math:`1/\sigma'^2` (not a bound).

    .. math::

        \sigma' = \max\Big\{\sigma :
            \tfrac1M\textstyle\sum_{k} \hat e(\theta + u_k(\sigma)) - \hat e(\theta)
            \le d\Big\},

    by bisection on :math:`\log\sigma` within ``sigma_range``, with
    :math:`u_k = \sigma\xi_k` or, ``magnitude_aware``, :math:`u_{k,i} =
    \sqrt{\sigma^2\theta_i^2 + \epsilon^2}\,\xi_{k,i}` (:math:`\epsilon = 10^{-3}`); the same
    seeded :math:`\xi_k` at every :math:`\sigma` (common random numbers).

    Args:
        model, loss_fn, data: As for :func:`pac_bayes_bound` (``data`` is the training set).
        target_deviation: :math:`d` (Jiang et al.: 0.1 on the error).
        magnitude_aware: Scale the noise by the parameter magnitudes.
        mc_samples: Draws per :math:`\sigma`.
        seed: Seed of the draws.
        error_fn: Per-sample error (default :func:`zero_one_error`); any finite per-sample
            loss is allowed here.
        sigma_range: Search interval ``(lo, hi)``.
        iterations: Bisection steps.
        epsilon: :math:`\epsilon` of the magnitude-aware noise.
        batch_norm, params: As for the curvature operators.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(50, 2); y = (X[:, 0] > 0).long()
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        >>> r = pac_bayes_flatness(model, "ce", (X, y), mc_samples=5)
        >>> r.bracketed and r.flatness == 1 / r.sigma**2
        True
    """
    target = float(target_deviation)
    if not target > 0:
        raise ValueError(f"target_deviation must be > 0, got {target_deviation}")
    lo, hi = (float(s) for s in sigma_range)
    if not 0 < lo < hi:
        raise ValueError(f"sigma_range must be (lo, hi) with 0 < lo < hi, got {sigma_range}")
    if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive integer, got {mc_samples}")
    mc_samples = int(mc_samples)
    ev = _Evaluator(model, loss_fn, data, error_fn, params, batch_norm, bounded=False)
    p = ev.space.numel
    base = ev.mean_error(None)
    theta_sq = ev.theta.square()

    def perturbed(sigma: float) -> float:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        scale = (
            (sigma**2 * theta_sq + epsilon**2).sqrt()
            if magnitude_aware
            else torch.full_like(theta_sq, sigma)
        )
        acc = 0.0
        for _ in range(mc_samples):
            xi = torch.randn(p, generator=gen, dtype=torch.float64).to(ev.space.device)
            acc += ev.mean_error(xi.mul_(scale))
        return acc / mc_samples

    notes: list[str] = ["a flatness measure (Jiang et al. 2020), not a generalization bound"]
    evaluations = 2
    e_lo, e_hi = perturbed(lo), perturbed(hi)
    bracketed = True
    if e_lo - base > target:
        bracketed = False
        sigma, e_sigma = lo, e_lo
        notes.append(
            f"even sigma = {lo:g} changes the error by {e_lo - base:.4g} > {target:g}; "
            "sigma' is below the search range (lower sigma_range[0])"
        )
    elif e_hi - base <= target:
        bracketed = False
        sigma, e_sigma = hi, e_hi
        notes.append(
            f"sigma = {hi:g} still changes the error by only {e_hi - base:.4g} <= {target:g}; "
            "sigma' is above the search range (raise sigma_range[1])"
        )
    else:
        a, b, e_a = math.log(lo), math.log(hi), e_lo
        for _ in range(int(iterations)):
            mid = 0.5 * (a + b)
            e_mid = perturbed(math.exp(mid))
            evaluations += 1
            if e_mid - base <= target:
                a, e_a = mid, e_mid
            else:
                b = mid
        sigma, e_sigma = math.exp(a), e_a
    return PacBayesFlatness(
        sigma=sigma,
        flatness=1.0 / sigma**2,
        base_error=base,
        perturbed_error=e_sigma,
        target_deviation=target,
        magnitude_aware=bool(magnitude_aware),
        epsilon=float(epsilon),
        mc_samples=mc_samples,
        seed=int(seed),
        bracketed=bracketed,
        evaluations=evaluations,
        notes=tuple(notes),
    )


__all__: list[str] = [
    "DEFAULT_GRID_J",
    "PacBayesBound",
    "PacBayesFlatness",
    "SigmaRow",
    "document_theorem_2_2_invalid",
    "kl_bernoulli",
    "kl_inverse_upper",
    "pac_bayes_bound",
    "pac_bayes_flatness",
    "sigma_grid",
    "union_delta",
    "zero_one_error",
]
