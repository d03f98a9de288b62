r"""The diagonal of a curvature operator, with a per-entry standard error.

**Hutchinson** (Bekas, Kokiopoulou & Saad 2007). For probes with
:math:`\mathbb{E}[zz^\top] = I`, :math:`\mathbb{E}[z \odot Az] = \operatorname{diag} A`:

.. math::

    \hat d = \frac1m \sum_{i=1}^m z_i \odot (A z_i),\qquad
    \mathrm{SE}_j = \frac{s_j}{\sqrt m},\ s_j^2 = \frac{1}{m-1}\sum_i
    \big((z_i \odot A z_i)_j - \hat d_j\big)^2 .

Entry :math:`j` of a Rademacher sample is :math:`A_{jj} + \sum_{k \ne j} z_j z_k A_{jk}`:
exact (standard error 0) for a diagonal :math:`A`. The probes are the stream ``"probe"`` of
:func:`~landscape_fast.trace`'s Hutchinson, so with the same seed and budget the entries of
:math:`\hat d` sum to its trace estimate.

**XDiag** (Epperly, Tropp & Webber 2024) is the exchangeable diagonal estimator of the
XTrace paper (see :mod:`landscape_fast.linalg.xtrace` for the notation): with
:math:`Q_{(i)}` an orthonormal basis of :math:`A\Omega` without column :math:`i`,

.. math::

    \hat d_i = \operatorname{diag}(Q_{(i)}Q_{(i)}^\top A)
    + \omega_i \odot \big((I - Q_{(i)}Q_{(i)}^\top) A\omega_i\big),\qquad
    \hat d = \frac1m\sum_i \hat d_i,

unbiased because :math:`Q_{(i)}` does not depend on :math:`\omega_i`. With
:math:`Y = A\Omega = QR`, :math:`Z = AQ`, :math:`s_i \propto R^{-\top}e_i` (unit) and
:math:`Q_{(i)}Q_{(i)}^\top = Q(I - s_is_i^\top)Q^\top`, and since
:math:`A\omega_i = QRe_i`,

.. math::

    \hat d_i = \operatorname{diag}(QZ^\top)_{\text{rows}}
    - (Qs_i) \odot (Zs_i) + (s_i^\top R e_i)\, \omega_i \odot (Qs_i),

i.e. :math:`\sum_k Q_{jk}Z_{jk}` plus two rank-one corrections per test vector:
:math:`O(m^2 p)` work after the :math:`2m` products. Test vectors are raw Rademacher or
Gaussian (stream ``"xdiag"``; no rescaling).

**Standard error.** The :math:`\hat d_i` are exchangeable, not independent (each
:math:`\omega_k` enters every other basis), and the paper's per-entry
:math:`s_j/\sqrt m` (sample standard deviation of the :math:`(\hat d_i)_j`) is optimistic:
:math:`\pm 3` of it covered 89-99.4% of (entry, seed) pairs over 400 seeds (fast and
:math:`1/i` decay, near-flat, indefinite, low rank plus noise; ``p`` 60-300; 20-100
products; both probe kinds). ``Estimate.stderr`` is instead, entry by entry, the
**jackknife** of the whole estimator, as for XTrace (:mod:`~landscape_fast.linalg.xtrace`):
with :math:`T_{(j)}` XDiag on the :math:`m - 1` test vectors other than :math:`\omega_j`,

.. math::

    \mathrm{SE}^2 = \frac{m-1}{m} \sum_{j=1}^m \big(T_{(j)} - \bar T_{(\cdot)}\big)^{\odot 2},
    \qquad \bar T_{(\cdot)} = \frac1m \sum_j T_{(j)}.

:math:`T_{(j)} = \frac1{m-1}\sum_{i \ne j}\hat d_i^{(j)}`, with :math:`\hat d_i^{(j)}` the
estimate of test vector :math:`i` from the basis of :math:`Y` without columns :math:`i` and
:math:`j`, :math:`Q(I - P_{ij})` with :math:`P_{ij}` the projector onto
:math:`\operatorname{span}(s_i, s_j)`. With :math:`\gamma_{ij} = s_i^\top s_j`,
:math:`c_{ij} = 1/(1 - \gamma_{ij}^2)`, :math:`q_i = Q s_i`,
:math:`z_i = A q_i = Z s_i`, :math:`\beta_i = s_i^\top R e_i` and
:math:`s_j^\top R e_i = 0` for :math:`j \ne i`,

.. math::

    \hat d_i^{(j)} = \operatorname{diag}(QZ^\top)
    - c_{ij}\big(q_i \odot z_i + q_j \odot z_j - \gamma_{ij}(q_i \odot z_j + q_j \odot z_i)\big)
    + c_{ij}\beta_i\, \omega_i \odot (q_i - \gamma_{ij} q_j),

and with :math:`D_i = \hat d_i - \operatorname{diag}(QZ^\top)
= q_i \odot (\beta_i\omega_i - z_i)` the sum over :math:`i \ne j` is

.. math::

    (m-1)\big(T_{(j)} - \operatorname{diag}(QZ^\top)\big) = \sum_{i \ne j} c_{ij} D_i
    - \Big(\sum_{i \ne j} c_{ij}\Big) q_j \odot z_j
    + z_j \odot \sum_{i \ne j} c_{ij}\gamma_{ij}\, q_i
    + q_j \odot \sum_{i \ne j} c_{ij}\gamma_{ij}\,(z_i - \beta_i\omega_i):

products of :math:`m \times m` coefficient matrices with the rows :math:`D_i`, :math:`q_i`,
:math:`z_i`, :math:`\omega_i`, :math:`O(m^2 p)` more host work (about 4 times the estimate's)
and no products with :math:`A`, in chunks of test vectors so that one ``(m, p)`` array is
the only large intermediate. By the Efron-Stein inequality its square is conservative on
average (as for XTrace); measured, :math:`\pm 3\,\mathrm{SE}` covers 99.2-100% of pairs on fast
(:math:`0.8^i`) and indefinite decay (98.3% for Gaussian test vectors at 20 products on
``p = 60``), with mean SE 1.2-4.5 times the RMS error. It is **not** 99% everywhere: the
misses are almost all on the low side and the per-entry error and SE are strongly
correlated (0.4-0.8; a small SE goes with an underestimate), a non-normality of the
studentised error rather than a too small variance. Where it shows: :math:`1/i` decay
(Rademacher 97.6-99.8%, Gaussian 94.4-99.5%), low rank plus a flat tail once the rank is
captured (96.9-99.0% at 40 products, 98.6-99.9% at 100), and Gaussian test vectors on a
near-flat spectrum (91-99%: entry :math:`j` carries :math:`\omega_{ij}^2`, a
:math:`\chi^2_1` factor, where Rademacher has 1; Rademacher covers 98.7-99.9% there).
Prefer Rademacher test vectors (the default).
A rank-deficient sketch (:math:`\sigma_{\min}(R) \le 10^{-10}\sigma_{\max}(R)`, e.g.
:math:`\operatorname{rank} A < m`) uses the whole basis for every :math:`i`; then
:math:`(I - QQ^\top)A\omega_i = 0`, every :math:`\hat d_i` and every :math:`T_{(j)}` is
:math:`\operatorname{diag}(QQ^\top A)`, and the standard error (jackknife and
:math:`s/\sqrt m` alike) is 0, exact when the range of :math:`A` was captured. With
``num_matvecs >= p`` the diagonal is computed exactly from the :math:`p` coordinate-vector
products.

**Adaptive runs** (a tolerance instead of a budget) stop when the standard error of the
vector (XDiag: the jackknife), measured as :math:`\lVert \mathrm{SE}\rVert_2`, satisfies

.. math:: \lVert \mathrm{SE} \rVert_2 \le \max(\text{atol},\ \text{rtol}\,\lVert\hat d\rVert_2),

checked after every probe for Hutchinson (the stopping point does not depend on
``block_size``) and after every doubling of the sketch for XDiag (8, 16, 32, ... test
vectors, reusing every product), in both cases only from
:data:`~landscape_fast.linalg.estimate.MIN_SAMPLES` samples on (XDiag: unless the sketch is
rank deficient).
If ``max_matvecs`` is reached first, ``converged=False``.

Example:
    >>> import torch
    >>> from landscape_fast.operators import DenseOperator
    >>> from landscape_fast.linalg.diagonal import diagonal
    >>> A = DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
    >>> est = diagonal(A, method="hutchinson", num_matvecs=10)
    >>> est.value[:3].tolist(), float(est.stderr.max()), est.n_matvecs   # exact on a diagonal
    ([1.0, 2.0, 3.0], 0.0, 10)
    >>> from landscape_fast.testing import operator_with_spectrum
    >>> op, M = operator_with_spectrum(0.9 ** torch.arange(100.0))
    >>> est = diagonal(op, method="xdiag", num_matvecs=60, seed=1)
    >>> bool((est.value - M.diagonal()).norm() < 3 * est.stderr.norm())
    True
"""

from __future__ import annotations

import math
import warnings

import torch

from landscape_fast.linalg.estimate import MIN_SAMPLES, Estimate
from landscape_fast.linalg.probes import apply_blocks, check_probe_kind, probe_block
from landscape_fast.linalg.xtrace import (
    _exact_diagonal,
    _levels,
    _Sketch,
)
from landscape_fast.operators.base import CurvatureOperator

METHODS = ("xdiag", "hutchinson")
DEFAULT_RTOL = 1e-2
DEFAULT_MAX_MATVECS = 1000
#: Test vectors per chunk of XDiag's jackknife (intermediates of ``(_CHUNK, p)``).
_CHUNK = 32


def _norm_target(rtol: float | None, atol: float | None):
    """``‖d̂‖ -> max(atol, rtol·‖d̂‖)``."""
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if tol is not None and not tol > 0:
            raise ValueError(f"diagonal: {name} must be positive, got {tol}")
    return lambda norm: max(atol or 0.0, (rtol or 0.0) * norm)


def _hutchinson(
    op: CurvatureOperator,
    *,
    num: int | None,
    target,
    max_matvecs: int,
    seed: int,
    probe: str,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, int, bool, int]:
    """Per-entry mean and SE of ``z ⊙ Az``; returns ``(mean, se, used, converged, drawn)``."""
    p = op.shape[0]
    goal = num if target is None else max_matvecs
    x0 = None
    s1 = torch.zeros(p, dtype=torch.float64, device=op.device)
    s2 = torch.zeros_like(s1)
    n, drawn = 0, 0

    def moments(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        var = (s2 - s1 * s1 / n).clamp_min(0) / max(n - 1, 1)
        return x0 + s1 / n, (var / n).sqrt()

    while n < goal:
        b = min(block_size, goal - n)
        if target is not None and n >= 2:
            mean, se = moments(n)
            tau = target(float(mean.norm()))
            var_sum = float((se * se).sum()) * n
            still = math.ceil(var_sum / tau**2) - n if tau > 0 else b
            b = max(1, min(b, still))
        Zb = probe_block(
            p, range(drawn, drawn + b), seed=seed, stream="probe", kind=probe,
            dtype=torch.float64, device=op.device,
        )  # fmt: skip
        X = Zb * apply_blocks(op, Zb, block_size, what="diagonal: probe", first=drawn)
        drawn += b
        for row in X:
            if x0 is None:
                x0 = row.clone()
            d = row - x0
            s1 += d
            s2 += d * d
            n += 1
            if target is not None and n >= MIN_SAMPLES:
                mean, se = moments(n)
                if float(se.norm()) <= target(float(mean.norm())):
                    return mean, se, n, True, drawn
    mean, se = moments(n)
    if n < 2:
        se = torch.full_like(se, math.nan)
    return mean, se, n, target is None, drawn


def _xdiag_stats(
    sk: _Sketch, *, keep: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""XDiag's estimate, its per-entry jackknife standard error and (``keep``) the rows
    :math:`T_{(j)}`, the XDiag estimates from the test vectors other than :math:`\omega_j`.

    Two passes over chunks of :data:`_CHUNK` test vectors: the first accumulates
    :math:`N_j = \sum_i c_{ij} D_i` (the only extra ``(m, p)`` array), the second forms the
    rows :math:`T_{(j)}` chunk by chunk (module docstring) and merges their per-entry
    moments (Chan et al.), so no other intermediate exceeds ``(_CHUNK, p)``.
    """
    Q, Z, Om, R, m, p = sk.Q, sk.Z, sk.Om, sk.R, sk.m, sk.p
    dqz = (Q * Z).sum(dim=0)
    if sk.deficient:  # every d_i and every T_(j) is diag(QQᵀA)
        loo = dqz.expand(m, p).cpu() if keep else None
        return dqz, torch.zeros_like(dqz), loo
    S = sk.S()
    beta = (S * R).sum(dim=0)  # s_iᵀ R e_i (s_jᵀ R e_i = 0 for j != i)
    K = S.T @ S  # γ_ij = s_iᵀ s_j
    C = 1 / (1 - K * K).clamp_min(torch.finfo(torch.float64).eps)
    C.fill_diagonal_(0.0)  # c_ij = 1 / (1 - γ_ij²) for i != j
    G = C * K  # c_ij γ_ij
    chunks = [slice(c, min(c + _CHUNK, m)) for c in range(0, m, _CHUNK)]

    def rotated(cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``q_i = Qᵀ s_i`` and ``z_i = A q_i`` for ``i`` in ``cols``."""
        return S[:, cols].T @ Q, S[:, cols].T @ Z

    N = torch.zeros((m, p), dtype=torch.float64, device=Q.device)
    d_sum = torch.zeros_like(dqz)
    for cols in chunks:
        QS, ZS = rotated(cols)
        D = QS * (beta[cols, None] * Om[cols] - ZS)  # d_i - diag(QQᵀA)
        d_sum += D.sum(dim=0)
        N += C[cols].T @ D
    c_sum = C.sum(dim=0)
    mean = torch.zeros_like(dqz)
    m2 = torch.zeros_like(dqz)
    n = 0
    rows = []
    for cols in chunks:
        QS, ZS = rotated(cols)
        SG = S @ G[:, cols]
        # Rows T_(j) - diag(QQᵀA) for j in cols.
        U = (
            N[cols] - c_sum[cols, None] * QS * ZS + ZS * (SG.T @ Q)
            + QS * (SG.T @ Z - (beta[:, None] * G[:, cols]).T @ Om)
        ) / (m - 1)  # fmt: skip
        if keep:
            rows.append(U.cpu())
        nb = U.shape[0]
        mb = U.mean(dim=0)
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + ((U - mb) ** 2).sum(dim=0) + delta * delta * (n * nb / tot)
        n = tot
    se = (m2 * ((m - 1) / m)).sqrt()
    loo = torch.cat(rows) + dqz.cpu() if keep else None
    return dqz + d_sum / m, se, loo


def diagonal(
    op: CurvatureOperator,
    method: str = "hutchinson",
    num_matvecs: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    *,
    probe: str = "rademacher",
    block_size: int = 8,
    max_matvecs: int = DEFAULT_MAX_MATVECS,
) -> Estimate:
    r"""Estimate :math:`\operatorname{diag} A` with a per-entry standard error.

    Args:
        op: Symmetric operator.
        method: ``"hutchinson"`` (default: i.i.d. samples, so its per-entry standard error
            covers the truth at the promised rate) or ``"xdiag"`` (exchangeable; far fewer
            products on decaying spectra, but its jackknife error bars under-cover on slowly
            decaying or flat spectra with few products: measured 91–98 % at ±3 SE there, see
            the module docstring; the result's ``notes`` repeat this).
        num_matvecs: Fixed product budget (Hutchinson: at least 2 probes; XDiag: at least 4,
            ``num_matvecs // 2`` test vectors, exact from ``p`` products when
            ``num_matvecs >= p``). Without it and without ``rtol``/``atol``: ``rtol=1e-2``.
        rtol: Stop when :math:`\lVert\mathrm{SE}\rVert_2 \le \text{rtol}\,\lVert\hat d\rVert_2`
            ...
        atol: ... or :math:`\lVert\mathrm{SE}\rVert_2 \le \text{atol}`.
        seed: Seed of the probes.
        probe: ``"rademacher"`` (exact on diagonal matrices for Hutchinson) or ``"gaussian"``.
        block_size: Vectors per operator product; the result does not depend on it.
        max_matvecs: Product budget of an adaptive run; if it is reached first the estimate
            says ``converged=False``.

    Returns:
        :class:`~landscape_fast.linalg.estimate.Estimate` with ``quantity="diagonal"``,
        ``value`` and ``stderr`` ``(p,)`` float64 CPU tensors (XDiag: per-entry jackknife
        standard error, not the :math:`s_j/\sqrt m` of the exchangeable estimates),
        ``samples=None`` and ``target_stderr`` the wanted :math:`\lVert\mathrm{SE}\rVert_2`
        of an adaptive run.

    Raises:
        ValueError: Bad arguments.
        FloatingPointError: A product is not finite (names the probe indices).
    """
    if method not in METHODS:
        raise ValueError(f"diagonal: method must be one of {METHODS}, got {method!r}")
    check_probe_kind(probe)
    if block_size < 1:
        raise ValueError(f"diagonal: block_size must be >= 1, got {block_size}")
    if num_matvecs is not None and (rtol is not None or atol is not None):
        raise ValueError("diagonal: give either num_matvecs (fixed budget) or rtol/atol, not both")
    if num_matvecs is None and rtol is None and atol is None:
        rtol = DEFAULT_RTOL
    target = None if num_matvecs is not None else _norm_target(rtol, atol)
    p = op.shape[0]
    settings = dict(method=method, quantity="diagonal", probe=probe, seed=seed)
    notes: list[str] = []

    def result(mean, se, n_matvecs, ok) -> Estimate:
        mean, se = mean.cpu(), se.cpu()
        tau = None if target is None else target(float(mean.norm()))
        if target is not None and not ok:
            notes.append(f"max_matvecs={max_matvecs} reached before the target standard error")
        return Estimate(
            value=mean, stderr=se, n_matvecs=n_matvecs, samples=None, target_stderr=tau,
            converged=ok, notes=tuple(notes), **settings,
        )  # fmt: skip

    if method == "hutchinson":
        if num_matvecs is not None and num_matvecs < 2:
            raise ValueError(
                f"diagonal: hutchinson needs num_matvecs >= 2 for a standard error, got "
                f"{num_matvecs}"
            )
        if target is not None and max_matvecs < 2:
            raise ValueError(f"diagonal: max_matvecs must be >= 2, got {max_matvecs}")
        mean, se, used, ok, drawn = _hutchinson(
            op, num=num_matvecs, target=target, max_matvecs=max_matvecs, seed=seed,
            probe=probe, block_size=block_size,
        )  # fmt: skip
        if used < 2:
            warnings.warn("diagonal: one probe gives no standard error", stacklevel=2)
        notes.append(f"{used} probes")
        return result(mean, se, drawn, ok)

    sk = _Sketch(
        op, seed=seed, probe=probe, block_size=block_size, stream="xdiag", normalize=False,
        name="diagonal: xdiag",
    )  # fmt: skip

    last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def stats() -> tuple[torch.Tensor, torch.Tensor]:
        """Estimate and jackknife standard error of the current level (computed once)."""
        if sk.m not in last:
            last[sk.m] = _xdiag_stats(sk)[:2]
        return last[sk.m]

    def exact() -> Estimate:
        d = _exact_diagonal(op, block_size, what="diagonal: coordinate vector")
        notes.append(f"exact: the diagonal from the {p} coordinate-vector products")
        return result(d, torch.zeros_like(d), sk.matvecs + p, True)

    def accept() -> bool:
        mean, se = stats()
        return float(se.norm()) <= target(float(mean.norm())) and (
            sk.m >= MIN_SAMPLES or sk.deficient
        )

    how, ok = _levels(
        sk, num_matvecs=num_matvecs, target=target, max_matvecs=max_matvecs, accept=accept
    )
    if how == "exact":
        return exact()
    mean, se = stats()
    notes.append(f"{sk.m} test vectors")
    notes.append(
        "XDiag's jackknife SE can under-cover on slowly decaying or flat spectra (91-98 % at "
        "±3 SE measured there); use method='hutchinson' when the error bars must hold"
    )
    if sk.deficient:
        notes.append(
            "the sketch is rank deficient (rank(A) < m?): diag(QQᵀA) with standard error 0, "
            "exact if the range of A was captured"
        )
    return result(mean, se, sk.matvecs, ok)
