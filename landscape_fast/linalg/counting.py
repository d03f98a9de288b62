r"""How many eigenvalues are large: effective dimension and valid eigenvalue-count bounds.

**Effective dimensionality** (Maddox, Benton & Wilson 2020) at a scale :math:`z > 0`:

.. math::

    N_{\text{eff}}(H, z) = \sum_{\lambda_i > 0} \frac{\lambda_i}{\lambda_i + z},

estimated by stochastic Lanczos quadrature (:func:`~landscape_fast.spectral_density`).

**Eigenvalue counts** (the seed's Lemma 3.3, corrected: THEORY.md C8). Markov's argument
needs non-negative terms, so :math:`k_T \le \operatorname{tr} H / T` is *false* for an
indefinite :math:`H` (:math:`H = \mathrm{diag}(10, 10, -19)`, :math:`T = 5`: :math:`k_T = 2 >
0.2`). The valid forms are

.. math::

    \#\{i: |\lambda_i| \ge T\} \le \frac{\lVert H\rVert_F^2}{T^2},\qquad
    \#\{i: \lambda_i \ge T\} \le \frac{\operatorname{tr} H_+}{T},\qquad
    \#\{i: \lambda_i \ge T\} \le \frac{\operatorname{tr} H}{T}\ \ (H \succeq 0\ \text{only}),

with :math:`H_+` the positive part. The right-hand sides are estimated (Hutch++ for
:math:`\lVert H\rVert_F^2` and the trace of a PSD operator, SLQ for
:math:`\operatorname{tr} H_+`), so :func:`eigenvalue_count_bound` reports the bound from the
point estimate and a *conservative* bound from the estimate plus three standard errors, which
holds whenever the estimate's ±3 SE interval covers the truth (about 99% of seeds).

Example:
    >>> import torch, landscape_fast as lf
    >>> H = lf.DenseOperator(torch.diag(torch.tensor([10.0, 10.0, -19.0], dtype=torch.float64)))
    >>> b = lf.eigenvalue_count_bound(H, 5.0, form="frobenius", num_matvecs=30)
    >>> b.counts, b.conservative_bound >= 3     # truth: (100 + 100 + 361) / 25 = 22.44 >= 3
    ('#{|λ| >= T}', True)
"""

from __future__ import annotations

from dataclasses import dataclass

from landscape_fast.linalg.density import SpectralDensity
from landscape_fast.linalg.estimate import Estimate
from landscape_fast.linalg.slq import spectral_density
from landscape_fast.linalg.trace import frobenius_norm_sq, trace
from landscape_fast.operators.base import CurvatureOperator

#: The valid forms of the count bound and what each counts.
FORMS = {
    "frobenius": "#{|λ| >= T}",
    "positive_trace": "#{λ >= T}",
    "psd_trace": "#{λ >= T}",
}
#: Standard errors added for the conservative bound.
Z_CONSERVATIVE = 3.0


def _density(
    op: CurvatureOperator | SpectralDensity, num_probes: int, num_steps: int, seed: int
) -> SpectralDensity:
    if isinstance(op, SpectralDensity):
        return op
    return spectral_density(op, num_probes=num_probes, num_steps=num_steps, seed=seed)


def effective_dimension(
    op: CurvatureOperator | SpectralDensity,
    z: float,
    *,
    num_probes: int = 8,
    num_steps: int = 80,
    seed: int = 0,
) -> Estimate:
    r"""Effective dimensionality :math:`\sum_{\lambda_i > 0} \lambda_i / (\lambda_i + z)`.

    Args:
        op: An operator (SLQ runs with ``num_probes × num_steps``) or a
            :class:`~landscape_fast.SpectralDensity` already computed (reused, no products).
        z: Scale :math:`z > 0` (eigenvalues well above it count 1, well below it 0); state it
            with the result.
        num_probes, num_steps, seed: SLQ settings when ``op`` is an operator.

    Returns:
        :class:`~landscape_fast.Estimate` with the standard error over probes.

    Example:
        >>> import torch, landscape_fast as lf
        >>> H = lf.DenseOperator(torch.diag(torch.tensor([9.0, 1.0, 0.0, -2.0]).double()))
        >>> round(lf.effective_dimension(H, 1.0, num_steps=4).value, 6)   # 0.9 + 0.5
        1.4
    """
    return _density(op, num_probes, num_steps, seed).effective_dimension(z)


@dataclass(frozen=True)
class CountBound:
    """An upper bound on the number of eigenvalues beyond a threshold.

    Attributes:
        threshold: :math:`T > 0`.
        form: ``"frobenius"``, ``"positive_trace"`` or ``"psd_trace"`` (module docstring).
        counts: What is bounded, e.g. ``"#{|λ| >= T}"``.
        bound: The right-hand side at the point estimate.
        conservative_bound: The right-hand side at the estimate plus three standard errors:
            an upper bound whenever the estimate's ±3 SE interval covers the truth.
        estimate: The estimate behind it (:math:`\\lVert H\\rVert_F^2`,
            :math:`\\operatorname{tr} H_+` or :math:`\\operatorname{tr} H`).
    """

    threshold: float
    form: str
    counts: str
    bound: float
    conservative_bound: float
    estimate: Estimate

    def describe(self) -> str:
        """One line with the bound, the threshold and where the estimate came from."""
        return (
            f"{self.counts} <= {self.bound:.4g} (conservative {self.conservative_bound:.4g}) "
            f"at T = {self.threshold:.4g}, {self.form} form, from {self.estimate.describe()}"
        )


def eigenvalue_count_bound(
    op: CurvatureOperator | SpectralDensity,
    threshold: float,
    form: str = "frobenius",
    *,
    num_matvecs: int | None = None,
    rtol: float | None = None,
    seed: int = 0,
    num_probes: int = 8,
    num_steps: int = 80,
    assume_psd: bool = False,
) -> CountBound:
    r"""A valid upper bound on the number of eigenvalues at or beyond ``threshold``.

    Args:
        op: The operator (or, for ``form="positive_trace"``, a computed
            :class:`~landscape_fast.SpectralDensity`).
        threshold: :math:`T > 0`.
        form: ``"frobenius"`` (:math:`\#\{|\lambda| \ge T\} \le \lVert H\rVert_F^2/T^2`, any
            symmetric ``H``), ``"positive_trace"``
            (:math:`\#\{\lambda \ge T\} \le \operatorname{tr} H_+ / T` via SLQ) or
            ``"psd_trace"`` (:math:`\operatorname{tr} H / T`; only for a positive
            semi-definite operator such as the GGN or the Fisher: pass ``assume_psd=True``).
        num_matvecs, rtol: Budget or tolerance of the Hutch++ estimate (``"frobenius"``,
            ``"psd_trace"``; default ``rtol=1e-2``).
        seed: Seed of every probe.
        num_probes, num_steps: SLQ settings (``"positive_trace"``).
        assume_psd: Required for ``"psd_trace"``: the caller vouches that ``H ⪰ 0``
            (for an indefinite Hessian that form is the seed's false Lemma 3.3).

    Returns:
        :class:`CountBound`.
    """
    if form not in FORMS:
        raise ValueError(
            f"eigenvalue_count_bound: form must be one of {tuple(FORMS)}, got {form!r}"
        )
    if not threshold > 0:
        raise ValueError(f"eigenvalue_count_bound: threshold must be positive, got {threshold}")
    if form == "positive_trace":
        est = _density(op, num_probes, num_steps, seed).trace_of(
            lambda t: t.clamp(min=0), quantity="tr H_+"
        )
        power = 1
    else:
        if isinstance(op, SpectralDensity):
            raise TypeError(f"eigenvalue_count_bound: form={form!r} needs the operator itself")
        if form == "psd_trace" and not assume_psd:
            raise ValueError(
                "eigenvalue_count_bound: tr(H)/T bounds the count only for a positive "
                "semi-definite operator (THEORY.md C8: it fails for indefinite Hessians); pass "
                "assume_psd=True for a GGN or Fisher, or use form='positive_trace'/'frobenius'"
            )
        estimator = frobenius_norm_sq if form == "frobenius" else trace
        est = estimator(op, "hutch++", num_matvecs=num_matvecs, rtol=rtol, seed=seed)
        power = 2 if form == "frobenius" else 1
    scale = threshold**power
    value = max(float(est.value), 0.0)
    upper = max(float(est.value) + Z_CONSERVATIVE * float(est.stderr), 0.0)
    return CountBound(
        threshold=float(threshold),
        form=form,
        counts=FORMS[form],
        bound=value / scale,
        conservative_bound=upper / scale,
        estimate=est,
    )
