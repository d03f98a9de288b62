r"""``Estimate``: a Monte-Carlo result with its standard error, and the sampling loop behind it.

A stochastic estimator averages i.i.d. samples :math:`x_1, \dots, x_m` of a random variable
whose mean is the wanted quantity (plus, for variance-reduced estimators such as Hutch++, a
deterministic part :math:`c` computed exactly):

.. math::

    \hat{T} = c + \frac{1}{m}\sum_{i=1}^m x_i,\qquad
    \mathrm{SE} = \frac{s}{\sqrt{m}},\quad s^2 = \frac{1}{m-1}\sum_i (x_i - \bar{x})^2 .

The standard error is the sample standard deviation over :math:`\sqrt{m}`: it needs
:math:`m \ge 2` (with one sample it is reported as ``nan`` and a warning says why, never as 0).
With a tolerance, :func:`sample_until` draws samples in blocks until
:math:`\mathrm{SE} \le \max(\text{atol}, \text{rtol}\,|\hat{T}|)`; the stopping point is the
first sample count at which the rule holds, whatever the block size, so a seed gives the same
numbers for every block size (samples computed past that point are counted in
``n_matvecs`` but not used).

Example:
    >>> import torch
    >>> from landscape_fast.linalg.estimate import Estimate
    >>> e = Estimate.from_samples(torch.tensor([1.0, 3.0, 2.0, 2.0]), n_matvecs=4,
    ...                           method="hutchinson", quantity="trace")
    >>> e.value, round(e.stderr, 4), [round(x, 4) for x in e.interval()]
    (2.0, 0.4082, [0.7753, 3.2247])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: Fewest samples an adaptive stop accepts: with fewer, the standard error is itself so noisy
#: that stopping when it happens to be small loses coverage (measured: ±3 SE covered 98.7% of
#: 600 seeds at 10, 99.7% at 20).
MIN_SAMPLES = 20


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate, its standard error and how it was obtained.

    Attributes:
        value: The estimate (a float; a ``(p,)`` tensor for :func:`~landscape_fast.diagonal`).
        stderr: Its standard error (same shape as ``value``; ``nan`` with fewer than 2 samples).
        n_matvecs: Operator products spent, including any computed past an adaptive stop.
        samples: The float64 i.i.d. samples of the random part whose mean enters ``value``
            (``None`` where they would be ``(m, p)``, as for the diagonal).
        method: ``"hutchinson"``, ``"hutch++"``, ``"xtrace"``, ``"xdiag"``, ...
        quantity: What is estimated (``"trace"``, ``"frobenius_norm_sq"``, ``"diagonal"``).
        exact_part: Deterministic contribution computed exactly (Hutch++'s low-rank part).
        probe: Probe distribution (``"rademacher"`` or ``"gaussian"``).
        seed: The seed.
        target_stderr: The standard error an adaptive run aimed at (``None``: fixed budget).
        converged: ``False`` when an adaptive run hit its product budget before the target.
        notes: Anything the user should know (capped budgets, sketch sizes, ...).
    """

    value: float | torch.Tensor
    stderr: float | torch.Tensor
    n_matvecs: int
    samples: torch.Tensor | None
    method: str
    quantity: str
    exact_part: float = 0.0
    probe: str = "rademacher"
    seed: int = 0
    target_stderr: float | None = None
    converged: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_samples(cls, samples: torch.Tensor, *, exact_part: float = 0.0, **fields) -> Estimate:
        """Mean plus ``exact_part`` and the standard error of i.i.d. ``samples`` (1-D)."""
        x = samples.detach().to(torch.float64).cpu().flatten()
        m = x.numel()
        if m == 0:
            raise ValueError("an estimate needs at least one sample")
        mean = float(x.mean())
        if m < 2:
            warnings.warn(
                f"{fields.get('method', 'estimator')}: one sample gives no standard error; "
                "stderr is nan (draw at least 2 probes)",
                stacklevel=3,
            )
            se = math.nan
        else:
            se = float(x.std(correction=1)) / math.sqrt(m)
        return cls(value=exact_part + mean, stderr=se, samples=x, exact_part=exact_part, **fields)

    @property
    def relative_stderr(self) -> float:
        """``stderr / |value|`` (``inf`` for a zero value; scalar estimates only)."""
        v, s = float(self.value), float(self.stderr)
        return s / abs(v) if v != 0 else math.inf

    def interval(self, z: float = 3.0) -> tuple[float, float]:
        """``value ± z·stderr`` (scalar estimates)."""
        v, s = float(self.value), float(self.stderr)
        return v - z * s, v + z * s

    def __repr__(self) -> str:
        return f"Estimate({self.describe()})"

    def describe(self) -> str:
        """One line: the value with its standard error and how it was computed."""
        if isinstance(self.value, torch.Tensor):
            head = (
                f"{self.quantity}: ({self.value.numel()},) vector, mean stderr "
                f"{float(torch.as_tensor(self.stderr).mean()):.3g}"
            )
        else:
            head = f"{self.quantity} = {float(self.value):.6g} ± {float(self.stderr):.2g} (1 SE)"
        n = "?" if self.samples is None else self.samples.numel()
        tail = f"{self.method}, {self.probe} probes, {n} samples, {self.n_matvecs} matvecs, "
        tail += f"seed {self.seed}"
        if self.target_stderr is not None:
            status = "reached" if self.converged else "NOT reached"
            tail += f", target SE {self.target_stderr:.2g} {status}"
        return f"{head} [{tail}]"


def stderr_target(rtol: float | None, atol: float | None) -> Callable[[float], float] | None:
    """``value -> max(atol, rtol·|value|)``, or ``None`` when neither tolerance is given."""
    if rtol is None and atol is None:
        return None
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and not tol > 0:
            raise ValueError(f"{name} must be positive, got {tol}")
    return lambda value: max(atol or 0.0, (rtol or 0.0) * abs(value))


def first_stop(
    samples: torch.Tensor, exact_part: float, target: Callable[[float], float], min_samples: int
) -> int | None:
    """First ``n >= min_samples`` at which the SE of ``samples[:n]`` meets ``target``."""
    x = samples.to(torch.float64).cpu()
    m = x.numel()
    if m < max(min_samples, 2):
        return None
    shift = x[0]
    n = torch.arange(1, m + 1, dtype=torch.float64)
    s1 = torch.cumsum(x - shift, 0)
    s2 = torch.cumsum((x - shift) ** 2, 0)
    mean = s1 / n
    var = (s2 - n * mean**2) / (n - 1).clamp(min=1)
    se = var.clamp(min=0).sqrt() / n.sqrt()
    for i in range(max(min_samples, 2) - 1, m):
        if se[i] <= target(exact_part + float(shift + mean[i])):
            return i + 1
    return None


def _still_needed(x: torch.Tensor, exact_part: float, target) -> int:
    """Predicted samples still needed (at least 1): :math:`s^2/\tau^2 - n`, or unbounded."""
    if target is None or x.numel() < 2:
        return 1 << 62
    tau = target(exact_part + float(x.mean()))
    var = float(x.var(correction=1))
    if not tau > 0:
        return 1 << 62
    return max(1, math.ceil(var / tau**2) - x.numel())


def sample_until(
    draw: Callable[[range], torch.Tensor],
    *,
    target: Callable[[float], float] | None,
    num_samples: int | None,
    max_samples: int,
    block_size: int,
    exact_part: float = 0.0,
    min_samples: int = MIN_SAMPLES,
    first: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, bool]:
    """Draw samples ``draw(range(i, j))`` in blocks: a fixed number, or until the target SE.

    Args:
        draw: Returns the float64 samples for probe indices ``range(i, j)``, spending
            ``j - i`` operator products.
        target: ``value -> wanted SE`` (see :func:`stderr_target`); ``None`` for a fixed count.
        num_samples: Fixed number of samples (used when ``target`` is ``None``).
        max_samples: Cap for an adaptive run.
        block_size: Samples drawn per call of ``draw``.
        exact_part: Deterministic part added to the mean (for the relative target).
        min_samples: Fewest samples an adaptive stop accepts.
        first: Samples already drawn for indices ``0..len(first)-1`` (reused, not redrawn).

    Returns:
        ``(samples used, samples drawn, target reached)``.
    """
    x = first.to(torch.float64).cpu() if first is not None else torch.zeros(0, dtype=torch.float64)
    drawn = 0
    goal = num_samples if target is None else max_samples
    while True:
        if target is not None:
            stop = first_stop(x, exact_part, target, min_samples)
            if stop is not None:
                return x[:stop], drawn, True
        if x.numel() >= goal:
            return x[:goal], drawn, target is None
        j = min(x.numel() + min(block_size, _still_needed(x, exact_part, target)), goal)
        new = draw(range(x.numel(), j)).to(torch.float64).cpu()
        drawn += new.numel()
        x = torch.cat([x, new])
