r"""Quantities derived from a few eigenvalues: condition numbers that mean something for
indefinite, rank-deficient Hessians, spectral gaps, and the number of outliers.

The textbook :math:`\kappa = \lambda_{max} / \lambda_{min}` is useless for a network's
Hessian: at an over-parameterized minimum :math:`\lambda_{min} \approx 0` and away from one
:math:`\lambda_{min} < 0`, so :math:`\kappa` is infinite, negative or noise (THEORY.md C2).
:func:`condition_numbers` reports instead

.. math::

    \kappa_j = \lambda_1 / \lambda_j \ (\lambda_j > 0),\qquad
    r_- = |\lambda_{min}| / \lambda_{max}\ \text{(negative ratio, Li et al. 2018)},\qquad
    \kappa_\delta = \frac{\lambda_{max} + \delta}{\lambda_{min} + \delta}\ \
    (\delta > -\lambda_{min}\ \text{stated}),

and the raw :math:`\kappa` only when every eigenvalue is positive (strongly convex problems).
:func:`count_outliers` finds the largest gap among the top eigenvalues (the outliers above
the bulk: about one per class for cross-entropy networks).

Example:
    >>> import torch
    >>> from landscape_fast.linalg.spectrum import condition_numbers, count_outliers
    >>> top = torch.tensor([9.0, 8.0, 7.5, 0.4, 0.3, 0.2])
    >>> count_outliers(top)
    3
    >>> c = condition_numbers(top, lambda_min=-0.05, ks=(3, 6), damping=0.1)
    >>> round(c.kappa[3], 4), round(c.negative_ratio, 4), c.raw is None
    (1.2, 0.0056, True)
    >>> round(c.damped, 2)
    182.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


def _descending(eigenvalues: torch.Tensor | Sequence[float]) -> torch.Tensor:
    vals = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()
    if vals.numel() == 0:
        raise ValueError("no eigenvalues given")
    if not bool(torch.isfinite(vals).all()):
        raise ValueError("eigenvalues must be finite")
    return torch.sort(vals, descending=True).values


def spectral_gaps(eigenvalues: torch.Tensor | Sequence[float]) -> torch.Tensor:
    r"""Gaps :math:`\lambda_i - \lambda_{i+1}` of the eigenvalues sorted descending."""
    vals = _descending(eigenvalues)
    return vals[:-1] - vals[1:]


def count_outliers(eigenvalues: torch.Tensor | Sequence[float], *, relative: bool = False) -> int:
    r"""Number of outlier eigenvalues: the position of the largest gap among the given top
    eigenvalues (sorted descending), counting the eigenvalues above it.

    Args:
        eigenvalues: The top eigenvalues (e.g. ``eigsh(H, k=20).eigenvalues``); include
            enough of the bulk for the gap to be visible.
        relative: Use ratios :math:`\lambda_i / \lambda_{i+1}` of positive eigenvalues
            instead of differences (for spectra spanning several decades).

    Returns:
        ``j`` such that :math:`\lambda_1..\lambda_j` lie above the largest gap; ``0`` for a
        single eigenvalue.
    """
    vals = _descending(eigenvalues)
    if vals.numel() < 2:
        return 0
    if relative:
        pos = vals[vals > 0]
        if pos.numel() < 2:
            return 0
        return int(torch.argmax(pos[:-1] / pos[1:])) + 1
    return int(torch.argmax(vals[:-1] - vals[1:])) + 1


@dataclass
class ConditionNumbers:
    """Condition numbers that are defined for indefinite, rank-deficient spectra.

    Attributes:
        lambda_max: Largest eigenvalue used.
        lambda_min: Smallest eigenvalue used (``None`` if not given).
        kappa: ``{j: λ₁/λ_j}`` for each requested ``j`` with ``λ_j > 0``.
        negative_ratio: ``|λ_min| / λ_max`` when ``λ_min < 0`` (else 0; ``None`` without
            ``λ_min``).
        damping: The ``δ`` of :attr:`damped` (``None`` if not asked).
        damped: ``(λ_max + δ) / (λ_min + δ)``, defined for ``δ > -λ_min``.
        raw: ``λ_max / λ_min``, only when ``λ_min > 0`` (positive definite); else ``None``.
        notes: Why a number is missing.
    """

    lambda_max: float
    lambda_min: float | None
    kappa: dict[int, float] = field(default_factory=dict)
    negative_ratio: float | None = None
    damping: float | None = None
    damped: float | None = None
    raw: float | None = None
    notes: list[str] = field(default_factory=list)


def condition_numbers(
    top: torch.Tensor | Sequence[float],
    *,
    lambda_min: float | None = None,
    ks: Sequence[int] = (10, 20),
    damping: float | None = None,
) -> ConditionNumbers:
    r"""Condition numbers from the top eigenvalues (and the smallest one, if known).

    Args:
        top: Top eigenvalues (any order), e.g. from ``eigsh(H, k=20, which="LA")``.
        lambda_min: The smallest eigenvalue, e.g. from ``eigsh(H, k=1, which="SA")``.
        ks: The ``j`` of :math:`\kappa_j = \lambda_1/\lambda_j` (e.g. the number of classes
            and 20); a ``j`` beyond the eigenvalues given is skipped with a note.
        damping: :math:`\delta` for :math:`\kappa(H + \delta I)`; must exceed
            :math:`-\lambda_{min}`.

    Raises:
        ValueError: For a ``damping`` that leaves :math:`H + \delta I` indefinite.
    """
    vals = _descending(top)
    lmax = float(vals[0])
    out = ConditionNumbers(lambda_max=lmax, lambda_min=lambda_min)
    for j in ks:
        if not 1 <= j <= vals.numel():
            out.notes.append(f"kappa_{j}: only {vals.numel()} eigenvalues given")
            continue
        lj = float(vals[j - 1])
        if lj > 0:
            out.kappa[j] = lmax / lj
        else:
            out.notes.append(f"kappa_{j}: lambda_{j} = {lj:.3g} is not positive")
    if lambda_min is not None:
        lmin = float(lambda_min)
        if lmax > 0:
            out.negative_ratio = max(0.0, -lmin) / lmax
        if lmin > 0:
            out.raw = lmax / lmin
        else:
            out.notes.append(
                f"raw kappa: lambda_min = {lmin:.3g} <= 0, so lambda_max/lambda_min is "
                "undefined (use kappa_j, the negative ratio or a damped kappa)"
            )
        if damping is not None:
            if lmin + damping <= 0:
                raise ValueError(
                    f"damping {damping} does not make H + δI positive definite "
                    f"(lambda_min = {lmin:.3g}); use δ > {-lmin:.3g}"
                )
            out.damping = float(damping)
            out.damped = (lmax + damping) / (lmin + damping)
    elif damping is not None:
        out.notes.append("damped kappa needs lambda_min")
    return out
