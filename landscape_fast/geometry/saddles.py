r"""Saddle index: how much negative curvature a point has (THEORY.md C8, C9).

At a critical point the *index* is the number of negative Hessian eigenvalues. For a
network's Hessian it is estimated together with the mass and the sum of the negative part,

.. math::

    k_- = \#\{i: \lambda_i < -\varepsilon s\},\qquad
    \frac{k_-}{p},\qquad
    \operatorname{tr} H_- = \sum_{\lambda_i < 0} \lambda_i ,

by stochastic Lanczos quadrature (:func:`~landscape_fast.spectral_density`; :math:`s` is the
largest :math:`|\theta|` of the quadrature, :math:`\varepsilon` a relative threshold that
keeps rounding noise around 0 out of the count), each with its standard error over the
probes, and the most negative eigenvalue :math:`\lambda_{min}` by
:func:`~landscape_fast.eigsh` with its true residual. The negative mass is not small early
in training (THEORY.md C8 measured :math:`|\sum\lambda_-| = 23` against
:math:`\operatorname{tr} H = 56` after one epoch), which is why the seed's Markov-type count
bound fails for Hessians. A point without negative eigenvalues can still be a saddle:
degenerate saddles of deep linear networks have :math:`H = 0` (THEORY.md C9), so "no
negative curvature" never reads "minimum" here.

Example:
    >>> import torch, landscape_fast as lf
    >>> H = lf.DenseOperator(torch.diag(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).double()))
    >>> s = lf.saddle_index(H, num_steps=5)
    >>> [round(float(x), 8) for x in (s.negative_count.value, s.negative_trace.value, s.lambda_min)]
    [2.0, -3.0, -2.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from landscape_fast.linalg.density import SpectralDensity
from landscape_fast.linalg.eigsh import eigsh
from landscape_fast.linalg.estimate import Estimate
from landscape_fast.linalg.slq import spectral_density
from landscape_fast.operators.base import CurvatureOperator


@dataclass(frozen=True)
class SaddleIndex:
    """Negative curvature at a point.

    Attributes:
        lambda_min: Most negative eigenvalue (:func:`~landscape_fast.eigsh`, ``which="SA"``).
        lambda_min_residual: Its true residual :math:`\\lVert Hv - \\lambda v\\rVert`.
        lambda_min_converged: Whether that eigenpair met the tolerance.
        negative_count: SLQ estimate of :math:`\\#\\{\\lambda < -\\varepsilon s\\}`.
        negative_fraction: The same divided by ``p``.
        negative_trace: SLQ estimate of :math:`\\operatorname{tr} H_-`.
        eps: The relative threshold :math:`\\varepsilon`.
        strict: ``True`` when :math:`\\lambda_{min}` is negative beyond its residual and the
            tolerance (a strict saddle or a non-critical point); ``False`` means no negative
            curvature was detected, which does not make the point a minimum.
        n_matvecs: Operator products spent (eigensolver and SLQ; 0 for a reused density).
        notes: Anything the user should know.
    """

    lambda_min: float
    lambda_min_residual: float
    lambda_min_converged: bool
    negative_count: Estimate
    negative_fraction: Estimate
    negative_trace: Estimate
    eps: float
    strict: bool
    n_matvecs: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line for a paper: λ_min, the index and the negative mass with their errors."""
        c, f, t = self.negative_count, self.negative_fraction, self.negative_trace
        kind = "negative curvature" if self.strict else "no negative curvature detected"
        return (
            f"{kind}: λ_min = {self.lambda_min:.4g} (residual {self.lambda_min_residual:.1e}); "
            f"index ≈ {float(c.value):.1f} ± {float(c.stderr):.1f} eigenvalues "
            f"< -{self.eps:g}·max|λ| ({100 * float(f.value):.2f} % of p); "
            f"tr H₋ ≈ {float(t.value):.4g} ± {float(t.stderr):.2g} "
            f"[SLQ {c.samples.numel()} probes, {self.n_matvecs} matvecs]"
        )


def saddle_index(
    op: CurvatureOperator,
    *,
    density: SpectralDensity | None = None,
    num_probes: int = 8,
    num_steps: int = 80,
    eps: float = 1e-4,
    tol: float = 1e-4,
    seed: int = 0,
) -> SaddleIndex:
    r"""Index, negative mass and :math:`\lambda_{min}` of a curvature operator.

    Args:
        op: Symmetric operator (typically ``lf.Hessian``).
        density: A :class:`~landscape_fast.SpectralDensity` of ``op`` already computed
            (reused, no SLQ products); else SLQ runs with ``num_probes × num_steps``.
        num_probes, num_steps: SLQ settings.
        eps: Relative threshold of the count (see the module docstring; counts whose
            threshold lies inside a dense cluster near 0 are quadrature-limited: raise
            ``num_steps`` to check them).
        tol: Eigensolver tolerance for :math:`\lambda_{min}` (relative to the spectral scale).
        seed: Seed of the probes and of the eigensolver.

    Returns:
        :class:`SaddleIndex`.
    """
    if not eps >= 0:
        raise ValueError(f"saddle_index: eps must be >= 0, got {eps}")
    matvecs = 0
    if density is None:
        density = spectral_density(op, num_probes=num_probes, num_steps=num_steps, seed=seed)
        matvecs += density.n_matvecs
    bottom = eigsh(op, k=1, which="SA", tol=tol, seed=seed)
    matvecs += bottom.n_matvecs
    lam = float(bottom.eigenvalues[0])
    res = float(bottom.residuals[0])
    scale = max(density.scale, abs(lam))
    strict = lam < -(res + tol * scale)
    notes = list(density.notes)
    if not bool(bottom.converged[0]):
        notes.append(f"λ_min did not converge to tol {tol:g} (residual {res:.1e})")
    if not strict:
        notes.append(
            "no negative curvature detected: a degenerate saddle can have none (THEORY.md C9), "
            "so this does not show the point is a minimum"
        )
    return SaddleIndex(
        lambda_min=lam,
        lambda_min_residual=res,
        lambda_min_converged=bool(bottom.converged[0]),
        negative_count=density.negative_count(eps),
        negative_fraction=density.negative_mass(eps),
        negative_trace=density.trace_of(lambda t: t.clamp(max=0), quantity="tr H_-"),
        eps=float(eps),
        strict=bool(strict),
        n_matvecs=matvecs,
        notes=tuple(notes),
    )
