r"""Trace and squared Frobenius norm of a curvature operator, with standard errors.

**Hutchinson.** For probes with :math:`\mathbb{E}[zz^\top] = I`,

.. math::

    \operatorname{tr} A = \mathbb{E}[z^\top A z],\qquad
    \lVert A \rVert_F^2 = \operatorname{tr} A^2 = \mathbb{E}\lVert A z \rVert^2,

with per-sample variance :math:`2(\lVert A\rVert_F^2 - \sum_i A_{ii}^2)` (Rademacher) or
:math:`2\lVert A\rVert_F^2` (Gaussian) for the trace.

**Hutch++** (Meyer, Musco, Musco & Woodruff 2021) removes the top of the spectrum first:
with :math:`Q` an orthonormal basis of :math:`A S` for a sketch :math:`S` of :math:`k`
probes and :math:`P = I - Q^\top Q` (rows of ``Q`` are the basis),

.. math::

    \operatorname{tr} A = \operatorname{tr}(Q A Q^\top) + \mathbb{E}[(Pg)^\top A (Pg)],\qquad
    \lVert A \rVert_F^2 = \lVert Q A \rVert_F^2 + \mathbb{E}\lVert A P g \rVert^2,

exactly for any orthonormal ``Q`` (the cross terms vanish by cyclicity), so only the
residual part is random and its variance :math:`2\lVert PAP\rVert_F^2` is small when the
spectrum decays. Given :math:`Q`, the residual samples are i.i.d. and their standard error
is the estimate's. A fixed budget :math:`m` uses :math:`k = \lfloor m/3 \rfloor` sketch
probes (:math:`2k` products) and :math:`m - 2k` residual probes. With a tolerance the sketch
starts empty and grows (8, 16, 32, ... probes) while a pilot of residual samples shows that
the last growth paid for itself and the predicted remaining cost exceeds the next growth's
(a flat spectrum gets no sketch: plain Hutchinson); then residual probes are drawn until the
standard error meets the target. The pilot's products are computed once and re-projected
onto each grown basis, :math:`A P g = A g - (A Q^\top)(Q g)`, so growing costs only the
sketch.

**XTrace** (Epperly, Tropp & Webber 2024): see :mod:`landscape_fast.linalg.xtrace`.

Every probe is reproducible (:mod:`landscape_fast.linalg.probes`): a seed gives the same
numbers for any block size and backend.

Example:
    >>> import torch, landscape_fast as lf
    >>> A = lf.DenseOperator(torch.diag(torch.linspace(1.0, 100.0, 200, dtype=torch.float64)))
    >>> est = lf.trace(A, method="hutchinson", num_matvecs=50, seed=0)
    >>> est.value, est.stderr, est.n_matvecs          # Rademacher: exact on a diagonal
    (10100.0, 0.0, 50)
    >>> est = lf.trace(A, method="hutch++", rtol=1e-2)
    >>> abs(est.value - 10100.0) < 3 * est.stderr + 1e-6, est.converged
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from landscape_fast.linalg.estimate import (
    MIN_SAMPLES,
    Estimate,
    sample_until,
    stderr_target,
)
from landscape_fast.linalg.probes import apply_blocks, check_probe_kind, probe_block
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.ops.block_reorth import block_reorth

METHODS = ("hutchinson", "hutch++", "xtrace")
#: Product budget of an adaptive run unless ``max_matvecs`` says otherwise.
DEFAULT_MAX_MATVECS = 1000
#: Default relative standard error when neither a budget nor a tolerance is given.
DEFAULT_RTOL = 1e-2
#: Sketch size of the first Hutch++ level in an adaptive run (then doubled).
FIRST_SKETCH = 8
#: Residual samples drawn after each sketch level to decide whether to grow it.
PILOT = 10
DEFAULT_BLOCK_SIZE = 8
#: Relative norm below which a sketch direction counts as already spanned (by basis dtype).
_RANK_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@dataclass(frozen=True)
class _Quantity:
    """What one sample is: ``z ↦ zᵀAz`` (trace) or ``z ↦ ‖Az‖²`` (Frobenius)."""

    name: str
    sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def exact(self, Q: torch.Tensor, AQ: torch.Tensor) -> float:
        """The deterministic part for the orthonormal rows ``Q`` and their products ``AQ``."""
        return float(self.sample(Q, AQ).sum()) if Q.shape[0] else 0.0


TRACE = _Quantity("trace", lambda Z, AZ: (Z * AZ).sum(dim=1, dtype=torch.float64))
FROBENIUS = _Quantity("frobenius_norm_sq", lambda Z, AZ: (AZ * AZ).sum(dim=1, dtype=torch.float64))


class _Sketch:
    """Hutch++'s orthonormal basis ``Q`` of ``A S`` and the products ``A Q``, grown in steps.

    Stored in the operator's precision, at least float32 (a float32 model with p = 10⁸ and a
    sketch of 64 vectors needs 2 × 25 GB, not 2 × 51 GB); sums accumulate in float64.
    """

    def __init__(self, op: CurvatureOperator, *, seed: int, probe: str, block_size: int) -> None:
        self.op, self.seed, self.probe, self.block_size = op, seed, probe, block_size
        p = op.shape[0]
        self.dtype = torch.promote_types(op.dtype, torch.float32)
        self.Q = torch.zeros((0, p), dtype=self.dtype, device=op.device)
        self.AQ = torch.zeros((0, p), dtype=self.dtype, device=op.device)
        self.size = 0  # sketch probes drawn
        self.matvecs = 0

    @property
    def full(self) -> bool:
        """``Q`` spans the whole space: the trace is exact."""
        return self.Q.shape[0] >= self.op.shape[0]

    def grow(self, size: int) -> None:
        """Draw sketch probes ``self.size .. size-1`` and extend ``Q`` and ``A Q``."""
        p = self.op.shape[0]
        S = probe_block(
            p, range(self.size, size), seed=self.seed, stream="sketch", kind=self.probe,
            dtype=self.dtype, device=self.op.device,
        )  # fmt: skip
        Y = apply_blocks(self.op, S, self.block_size, what="hutch++: sketch probe", first=self.size)
        Y = Y.to(self.dtype)
        self.matvecs += S.shape[0]
        self.size = size
        out = block_reorth(self.Q, Y.contiguous(), rank_tol=_RANK_TOL[self.dtype])
        new = out.W[~out.deficient]
        if new.shape[0]:
            AQ = apply_blocks(self.op, new, self.block_size, what="hutch++: sketch basis vector")
            AQ = AQ.to(self.dtype)
            self.matvecs += new.shape[0]
            self.Q = torch.cat([self.Q, new])
            self.AQ = torch.cat([self.AQ, AQ])

    def _probes(self, indices: range) -> torch.Tensor:
        return probe_block(
            self.op.shape[0], indices, seed=self.seed, stream="probe", kind=self.probe,
            dtype=self.dtype, device=self.op.device,
        )  # fmt: skip

    def residual_draw(self, quantity: _Quantity) -> Callable[[range], torch.Tensor]:
        """Samples of the residual ``(Pg)ᵀA(Pg)`` (or ``‖APg‖²``) for probe indices."""

        def draw(indices: range) -> torch.Tensor:
            G = self._probes(indices)
            if self.Q.shape[0]:
                G = G - (G @ self.Q.T) @ self.Q
            AG = apply_blocks(
                self.op, G, self.block_size, what=f"{quantity.name}: probe", first=indices.start
            ).to(self.dtype)
            self.matvecs += G.shape[0]
            return quantity.sample(G, AG)

        return draw

    def plain_products(self, indices: range, quantity: _Quantity) -> torch.Tensor:
        """The products ``A g`` of the unprojected probes (kept to be re-projected)."""
        G = self._probes(indices)
        AG = apply_blocks(self.op, G, self.block_size, what=f"{quantity.name}: probe")
        self.matvecs += G.shape[0]
        return AG.to(self.dtype)

    def reprojected(self, quantity: _Quantity, indices: range, AG: torch.Tensor) -> torch.Tensor:
        r"""Residual samples for the current basis from products of the *unprojected* probes:
        :math:`A P g = A g - (AQ)^\top (Q g)` (``A`` is linear, ``AQ`` is stored), so a
        grown sketch costs no new products for samples drawn before it grew."""
        G = self._probes(indices)
        if self.Q.shape[0]:
            C = G @ self.Q.T
            G = G - C @ self.Q
            AG = AG - C @ self.AQ
        return quantity.sample(G, AG)


def _hutch(
    op: CurvatureOperator,
    quantity: _Quantity,
    *,
    sketch_size: int | None,
    num_samples: int | None,
    target,
    max_matvecs: int,
    seed: int,
    probe: str,
    block_size: int,
    min_samples: int,
) -> tuple[_Sketch, torch.Tensor, bool]:
    """Hutchinson (``sketch_size=0``) or Hutch++ (fixed or adaptive sketch), then residuals."""
    sk = _Sketch(op, seed=seed, probe=probe, block_size=block_size)
    if target is None:
        if sketch_size:
            sk.grow(sketch_size)
            if sk.full:
                return sk, torch.zeros(0, dtype=torch.float64), True
            num_samples += 2 * sketch_size - sk.matvecs  # a rank-deficient sketch spent less
        samples, _, ok = sample_until(
            sk.residual_draw(quantity), target=None, num_samples=num_samples,
            max_samples=num_samples, block_size=block_size,
        )  # fmt: skip
        return sk, samples, ok
    pilot = None
    if sketch_size is None:  # adaptive Hutch++: grow the sketch while it pays
        pilot = _adaptive_sketch(sk, quantity, target, max_matvecs, PILOT)
        if sk.full:
            return sk, torch.zeros(0, dtype=torch.float64), True
    draw = sk.residual_draw(quantity)
    samples, _, ok = sample_until(
        draw, target=target, num_samples=None,
        max_samples=max(max_matvecs - sk.matvecs + (0 if pilot is None else pilot.numel()), 2),
        block_size=block_size, exact_part=quantity.exact(sk.Q, sk.AQ),
        min_samples=min_samples, first=pilot,
    )  # fmt: skip
    return sk, samples, ok


def _adaptive_sketch(
    sk: _Sketch, quantity: _Quantity, target, max_matvecs: int, pilot_size: int
) -> torch.Tensor | None:
    r"""Grow the Hutch++ sketch while it pays; return the last level's pilot samples
    (``None`` once the sketch spans the whole space).

    Level 0 has no sketch (plain Hutchinson), then the sketch has 8, 16, 32, ... probes. At
    each level ``pilot_size`` residual samples estimate the per-sample variance :math:`v`
    and the residual probes still needed, :math:`v / \tau^2` for the target standard error
    :math:`\tau`. The pilot probes are multiplied once, unprojected, and re-projected onto
    each level's basis (:meth:`_Sketch.reprojected`), so a level costs only its sketch. The
    next level is built only if it is predicted to cost less in all than stopping here: with
    the variance falling again by the last level's factor :math:`r = v / v_{prev} < 1`, its
    products plus the probes then still needed, :math:`c_{next} + (r\,v/\tau^2 - n_{pilot})_+`,
    must be below :math:`v/\tau^2 - n_{pilot}` (at level 0, with no decay seen yet: the need
    must be at least twice the first level's cost), and it must fit in the budget. So a flat
    spectrum costs what Hutchinson costs, and a decaying one gets the sketch it needs.
    """
    prev_var: float | None = None
    size = 0
    probes = range(0, pilot_size)
    A_pilot = sk.plain_products(probes, quantity)
    while True:
        if size:
            sk.grow(min(size, sk.op.shape[0]))
            if sk.full:
                return None
        pilot = sk.reprojected(quantity, probes, A_pilot)
        var = float(pilot.var(correction=1))
        tau = target(quantity.exact(sk.Q, sk.AQ) + float(pilot.mean()))
        need = var / tau**2 if tau > 0 else math.inf
        next_size = FIRST_SKETCH if size == 0 else 2 * size
        next_cost = 2 * (next_size - size)
        if prev_var is None:  # no decay seen yet
            pays = need >= 2 * next_cost
        else:  # the variance keeps falling by the last level's factor
            ratio = var / prev_var if prev_var > 0 else 1.0
            after = next_cost + max(need * ratio - pilot_size, 0.0)
            pays = ratio < 1.0 and after < need - pilot_size
        if not pays or need <= pilot_size or sk.matvecs + next_cost > max_matvecs:
            return pilot
        prev_var = var
        size = next_size


def _estimate(
    op: CurvatureOperator,
    quantity: _Quantity,
    method: str,
    num_matvecs: int | None,
    rtol: float | None,
    atol: float | None,
    seed: int,
    probe: str,
    block_size: int | None,
    max_matvecs: int | None,
    min_samples: int,
) -> Estimate:
    name = quantity.name
    if method not in METHODS:
        raise ValueError(f"{name}: method must be one of {METHODS}, got {method!r}")
    check_probe_kind(probe)
    if num_matvecs is not None and (rtol is not None or atol is not None):
        raise ValueError(f"{name}: give either num_matvecs (fixed budget) or rtol/atol, not both")
    if num_matvecs is None and rtol is None and atol is None:
        rtol = DEFAULT_RTOL
    target = stderr_target(rtol, atol)
    max_matvecs = DEFAULT_MAX_MATVECS if max_matvecs is None else int(max_matvecs)
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else int(block_size)
    if block_size < 1:
        raise ValueError(f"{name}: block_size must be >= 1, got {block_size}")
    settings = dict(probe=probe, seed=seed, quantity=name)
    if method == "xtrace":
        if quantity is not TRACE:
            raise ValueError(f"{name}: method='xtrace' estimates traces only; use 'hutch++'")
        from landscape_fast.linalg.xtrace import xtrace_estimate

        return xtrace_estimate(
            op, num_matvecs=num_matvecs, target=target, max_matvecs=max_matvecs, seed=seed,
            probe=probe, block_size=block_size,
        )  # fmt: skip

    notes: list[str] = []
    if method == "hutchinson":
        sketch_size = 0
        num_samples = num_matvecs
    elif num_matvecs is not None:
        if num_matvecs < 3:
            raise ValueError(
                f"{name}: hutch++ needs num_matvecs >= 3 (a third sketches, a third builds the "
                f"basis, the rest are residual probes), got {num_matvecs}; use 'hutchinson'"
            )
        sketch_size = min(num_matvecs // 3, op.shape[0])
        num_samples = num_matvecs - 2 * sketch_size
    else:
        sketch_size, num_samples = None, None
    if num_samples is not None and num_samples < 1:
        raise ValueError(f"{name}: num_matvecs must be >= 1, got {num_matvecs}")
    before = op.n_matvecs
    sk, samples, ok = _hutch(
        op, quantity, sketch_size=sketch_size, num_samples=num_samples, target=target,
        max_matvecs=max_matvecs, seed=seed, probe=probe, block_size=block_size,
        min_samples=min_samples,
    )  # fmt: skip
    if method == "hutch++":
        notes.append(f"sketch of {sk.size} probes, basis rank {sk.Q.shape[0]}")
    if sk.full:
        notes.append("the sketch spans the whole space: the value is exact")
    exact = quantity.exact(sk.Q, sk.AQ)
    if sk.full:
        return Estimate(
            value=exact, stderr=0.0, n_matvecs=op.n_matvecs - before, samples=samples,
            method=method, exact_part=exact, notes=tuple(notes),
            target_stderr=None if target is None else target(exact), **settings,
        )  # fmt: skip
    tau = None if target is None else target(exact + float(samples.mean()))
    if target is not None and not ok:
        notes.append(f"max_matvecs={max_matvecs} reached before the target standard error")
    return Estimate.from_samples(
        samples, exact_part=exact, n_matvecs=op.n_matvecs - before, method=method,
        target_stderr=tau, converged=ok, notes=tuple(notes), **settings,
    )  # fmt: skip


def trace(
    op: CurvatureOperator,
    method: str = "hutch++",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    *,
    probe: str = "rademacher",
    block_size: int | None = None,
    max_matvecs: int | None = None,
    min_samples: int = MIN_SAMPLES,
) -> Estimate:
    r"""Estimate :math:`\operatorname{tr} A` with a standard error.

    Args:
        op: Symmetric operator.
        method: ``"hutch++"`` (default: fewest products on decaying spectra),
            ``"hutchinson"`` or ``"xtrace"``.
        num_matvecs: Fixed product budget. Without it (and without ``rtol``/``atol``) the run
            is adaptive with ``rtol=1e-2``.
        rtol: Stop when the standard error is at most ``rtol·|value|`` ...
        atol: ... or at most ``atol`` (use it when the trace may be near 0: indefinite ``A``).
        seed: Seed of every probe.
        probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
        block_size: Probes per operator product (one data pass each); default 8. The result
            does not depend on it.
        max_matvecs: Product budget of an adaptive run (default 1000); if it is hit the
            estimate says ``converged=False``.
        min_samples: Fewest random samples an adaptive stop accepts.

    Returns:
        :class:`~landscape_fast.linalg.estimate.Estimate`; ``value ± 3·stderr`` covers the
        trace in about 99% of seeds.
    """
    return _estimate(
        op, TRACE, method, num_matvecs, rtol, atol, seed, probe, block_size, max_matvecs,
        min_samples,
    )  # fmt: skip


def frobenius_norm_sq(
    op: CurvatureOperator,
    method: str = "hutch++",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    *,
    probe: str = "rademacher",
    block_size: int | None = None,
    max_matvecs: int | None = None,
    min_samples: int = MIN_SAMPLES,
) -> Estimate:
    r"""Estimate :math:`\lVert A\rVert_F^2 = \operatorname{tr} A^2 = \sum_i \lambda_i^2`.

    Hutchinson samples :math:`\lVert Az\rVert^2`; Hutch++ adds the exact
    :math:`\lVert QA\rVert_F^2` of a sketched basis. Arguments as :func:`trace` (no
    ``"xtrace"``). :math:`\lVert A\rVert_F^2/T^2` bounds the number of eigenvalues with
    :math:`|\lambda| \ge T` (see :func:`~landscape_fast.eigenvalue_count_bound`).

    Example:
        >>> import torch, landscape_fast as lf
        >>> A = lf.DenseOperator(torch.diag(torch.tensor([3.0, -4.0], dtype=torch.float64)))
        >>> lf.frobenius_norm_sq(A, method="hutchinson", num_matvecs=4).value
        25.0
    """
    return _estimate(
        op, FROBENIUS, method, num_matvecs, rtol, atol, seed, probe, block_size, max_matvecs,
        min_samples,
    )  # fmt: skip
