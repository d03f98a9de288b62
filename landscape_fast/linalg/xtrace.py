r"""XTrace: exchangeable trace estimation (Epperly, Tropp & Webber 2024, SIMAX).

XTrace draws :math:`m` test vectors :math:`\omega_1, \dots, \omega_m` (``num_matvecs // 2``;
each costs two products), forms :math:`Y = A\Omega` and, for every :math:`i`, an orthonormal
basis :math:`Q_{(i)}` of the range of :math:`Y` *without* its column :math:`i`. Since
:math:`Q_{(i)}` does not depend on :math:`\omega_i`, with :math:`P_i = I - Q_{(i)}Q_{(i)}^\top`

.. math::

    \hat t_i = \operatorname{tr}(Q_{(i)}^\top A Q_{(i)}) + \omega_i^\top P_i A P_i\,\omega_i,
    \qquad \hat t = \frac1m \sum_{i=1}^m \hat t_i,

is unbiased: every test vector serves both the low-rank approximation (as in Hutch++) and
the residual estimate.

**Standard error.** The :math:`\hat t_i` are exchangeable, not independent: each
:math:`\omega_j` enters every other basis, and the :math:`\hat t_i` are positively
correlated. The paper's :math:`s/\sqrt m` (:math:`s` the sample standard deviation of the
:math:`\hat t_i`) has squared expectation :math:`\operatorname{Var}\hat t -
\operatorname{Cov}(\hat t_1, \hat t_2)` and is optimistic: measured over 400 seeds,
:math:`\pm 3` of it covers only 60-99.5% of seeds (fast and slow decay, near-flat,
indefinite, low rank plus noise; 20-100 products). ``Estimate.stderr`` is instead the
**jackknife** of the whole estimator (Efron & Stein 1981; Epperly & Tropp 2024,
"Efficient error and variance estimation for randomized matrix computations"): with
:math:`T_{(j)}` the XTrace estimate from the :math:`m - 1` test vectors other than
:math:`\omega_j`,

.. math::

    \mathrm{SE}^2 = \frac{m-1}{m} \sum_{j=1}^m \big(T_{(j)} - \bar T_{(\cdot)}\big)^2,
    \qquad \bar T_{(\cdot)} = \frac1m \sum_j T_{(j)}.

By the Efron-Stein inequality its expectation is at least :math:`\frac{m-1}{m}` times the
variance of XTrace with :math:`m - 1` test vectors; equality holds only for a statistic
additive in the test vectors, and a :math:`k`-th order interaction term of the Hoeffding
decomposition is counted :math:`k` times. XTrace's variance is mostly interaction (the
low-rank part depends on all test vectors jointly), so this standard error is
conservative: on the spectra above (``p`` 60-300, 20-100 products, both probe kinds, 400
seeds each) :math:`\pm 3\,\mathrm{SE}` covered 99.5-100% of seeds from 40 products on
(98.8-100% at 20 products, i.e. 10 test vectors, on a near-flat spectrum), with mean SE
1.1-3.9 times the RMS error (about 2 typically; most on fast geometric decay at the larger
budgets, where one test vector more shrinks the error a lot). A (nearly) unbiased
variance estimate exists too: since :math:`\mathbb E[\hat t_i \mid \omega_{k \ne i}] =
\operatorname{tr} A`, :math:`-\frac1m\sum_i (\hat t_i - \hat t)(T_{(i)} - \bar T_{(\cdot)})`
is unbiased up to centring at :math:`\hat t`, and its mean matched the squared RMS error
within 15%; but it is noisy, and :math:`\pm 3` of its root covered as few as 84% of seeds.
The contract asks for coverage, hence the jackknife.
When the sketch is rank deficient (below) :math:`T_{(j)}` is the mean of the other
:math:`\hat t_i` and the jackknife reduces to :math:`s/\sqrt m`.

**Fast formula.** With the thin factorisation :math:`Y = QR` (:math:`Q` of :math:`m`
orthonormal columns; here :math:`R = Q^\top Y` need not be triangular), the basis
without column :math:`i` is :math:`Q(I - s_i s_i^\top)` with :math:`s_i` the unit vector
orthogonal to every other column of :math:`R`, i.e. :math:`s_i \propto R^{-\top} e_i`.
With :math:`Z = AQ`, :math:`H = Q^\top A Q`, :math:`w_i = Q^\top\omega_i`,
:math:`r_i = R e_i = Q^\top A\omega_i`, :math:`\alpha_i = s_i^\top w_i` and
:math:`u_i = w_i - \alpha_i s_i` (the coordinates of :math:`Q_{(i)}Q_{(i)}^\top\omega_i`),

.. math::

    \hat t_i = \operatorname{tr} H - s_i^\top H s_i
    + c_i^2\left(\omega_i^\top A \omega_i - 2\,u_i^\top r_i + u_i^\top H u_i\right),

at :math:`O(m^2 p + m^3)` cost after the :math:`2m` products. :math:`c_i = 1` for Rademacher
test vectors. Gaussian test vectors use the paper's *improved* variant: they are scaled to
norm :math:`\sqrt p` and then by :math:`c_i^2 = (p - m + 1)/\lVert P_i\omega_i\rVert^2`
(:math:`\lVert P_i\omega_i\rVert^2 = \lVert\omega_i\rVert^2 - \lVert u_i\rVert^2`), so the
residual vector has exactly the norm of a Gaussian vector in the :math:`(p-m+1)`-dimensional
complement; its direction is uniform there, so the estimator stays unbiased.

**Jackknife without products.** :math:`T_{(j)} = \frac{1}{m-1}\sum_{i \ne j} \hat t_i^{(j)}`
with :math:`\hat t_i^{(j)}` the estimate of test vector :math:`i` with the basis of
:math:`Y` without columns :math:`i` and :math:`j`: :math:`Q(I - P_{ij})` with
:math:`P_{ij}` the orthogonal projector onto :math:`\operatorname{span}(s_i, s_j)` (the
complement of the other columns of :math:`R`). Everything stays in the span of
:math:`Q`, where :math:`Z` already holds :math:`A`. With :math:`\gamma = s_i^\top s_j`,
:math:`(b_1, b_2)` solving
:math:`\begin{pmatrix}1 & \gamma\\ \gamma & 1\end{pmatrix} b
= (s_i^\top w_i, s_j^\top w_i)^\top` and :math:`u = w_i - b_1 s_i - b_2 s_j`,

.. math::

    \hat t_i^{(j)} = \operatorname{tr} H
    - \frac{s_i^\top H s_i + s_j^\top H s_j - 2\gamma\, s_i^\top H s_j}{1 - \gamma^2}
    + c_{ij}^2\left(\omega_i^\top A\omega_i - 2\,u^\top r_i + u^\top H u\right),

with :math:`c_{ij}^2 = (p - m + 2)/(\lVert\omega_i\rVert^2 - \lVert u\rVert^2)` for
improved Gaussian test vectors (1 for Rademacher). All :math:`m^2` pairs come from the
:math:`m \times m` matrices :math:`S^\top S`, :math:`S^\top H S`, :math:`S^\top W`,
:math:`S^\top R` and :math:`S^\top H W`: :math:`O(m^3)` more host work, no products.

**Rank deficiency.** When :math:`A` has rank below :math:`m` (a low-rank operator, or
:math:`p` small), :math:`Y` is rank deficient and :math:`R` singular. The basis :math:`Q`
is then completed with random directions (independent of :math:`\Omega`), and when
:math:`\sigma_{\min}(R) \le 10^{-10}\sigma_{\max}(R)` every leave-one-out basis is taken to
be the whole :math:`Q` (it contains the range of :math:`Y`, which a rank-deficient
:math:`Y` keeps after dropping any one column):
:math:`\hat t_i = \operatorname{tr} H + c_i^2\,\omega_i^\top (I - QQ^\top) A (I - QQ^\top)
\omega_i` (improved Gaussian: :math:`c_i^2 = (p - m)/\lVert(I - QQ^\top)\omega_i\rVert^2`).
If the range of :math:`A` lies in that of :math:`Y` this is exact (the residual vanishes);
otherwise the error is of the size of the discarded part of the spectrum. A note says so.

**Tiny problems.** With ``num_matvecs >= p`` the trace is computed exactly from the
:math:`p` products :math:`e_j^\top A e_j` (fewer than XTrace would spend), with ``stderr``
0 and a note.

**Adaptive runs** start with 8 test vectors and double :math:`m`. The sketch is nested:
the basis is grown chunk by chunk (8, 16, 32, ... vectors), each chunk orthogonalised
against the previous ones, so a level reuses every product of the previous one and a fixed
budget of :math:`m` gives the same numbers as an adaptive run stopped at :math:`m`. The
run stops at the first level (with at least
:data:`~landscape_fast.linalg.estimate.MIN_SAMPLES` test vectors, unless the sketch is rank
deficient) whose standard error meets
the target, or when the next level does not fit in ``max_matvecs`` (``converged=False``).

Every test vector comes from :func:`~landscape_fast.linalg.probes.probe_block` (stream
``"xtrace"``): the result does not depend on ``block_size``.

Example:
    >>> import torch
    >>> from landscape_fast.testing import operator_with_spectrum
    >>> from landscape_fast.linalg.xtrace import xtrace_estimate
    >>> op, A = operator_with_spectrum(1.0 / torch.arange(1.0, 201.0) ** 2)
    >>> est = xtrace_estimate(op, num_matvecs=60, seed=0)
    >>> bool(abs(est.value - float(A.trace())) <= 3 * est.stderr), est.n_matvecs
    (True, 60)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from landscape_fast.linalg.estimate import MIN_SAMPLES, Estimate, stderr_target
from landscape_fast.linalg.lanczos import project_out
from landscape_fast.linalg.probes import apply_blocks, check_probe_kind, probe_block
from landscape_fast.operators.base import CurvatureOperator

#: Test vectors of the first level of an adaptive run (then doubled).
FIRST_LEVEL = 8
#: ``sigma_min(R) <= RANK_TOL * sigma_max(R)``: the sketch is treated as rank deficient.
RANK_TOL = 1e-10
#: New sketch directions with singular value below ``FILL_TOL`` times the largest product
#: norm so far are replaced by random directions (they are rounding noise).
FILL_TOL = 1e-12
DEFAULT_RTOL = 1e-2
DEFAULT_MAX_MATVECS = 1000


def _exact_diagonal(op: CurvatureOperator, block_size: int, *, what: str) -> torch.Tensor:
    """The ``(p,)`` float64 diagonal from the ``p`` products with the coordinate vectors."""
    p = op.shape[0]
    d = torch.empty(p, dtype=torch.float64, device=op.device)
    for i in range(0, p, block_size):
        j = min(i + block_size, p)
        E = torch.zeros((j - i, p), dtype=torch.float64, device=op.device)
        E[torch.arange(j - i), torch.arange(i, j)] = 1.0
        AE = apply_blocks(op, E, block_size, what=what, first=i)
        d[i:j] = AE[torch.arange(j - i), torch.arange(i, j)]
    return d


class _Sketch:
    """The nested XTrace/XDiag sketch: test vectors ``Om``, basis ``Q``, ``Z = Q A``, ``R``.

    Rows are vectors: ``Om`` ``(m, p)``, ``Q`` ``(m, p)`` orthonormal rows, ``Z = Q A``,
    ``R = Q Yᵀ`` ``(m, m)`` (column ``i`` = coordinates of ``A ω_i`` in the basis) and
    ``dOmY[i] = ω_iᵀ A ω_i``. ``Y`` itself is not kept.
    """

    def __init__(
        self,
        op: CurvatureOperator,
        *,
        seed: int,
        probe: str,
        block_size: int,
        stream: str,
        normalize: bool,
        name: str,
    ) -> None:
        self.op, self.seed, self.probe, self.block_size = op, seed, probe, block_size
        self.stream, self.normalize, self.name = stream, normalize, name
        self.p = p = op.shape[0]
        z = torch.zeros((0, p), dtype=torch.float64, device=op.device)
        self.Om, self.Q, self.Z = z, z.clone(), z.clone()
        self.R = torch.zeros((0, 0), dtype=torch.float64, device=op.device)
        self.dOmY = torch.zeros(0, dtype=torch.float64, device=op.device)
        self.scale = 0.0  # largest ‖A ω_i‖ so far
        self.matvecs = 0
        self._deficient: bool | None = None

    @property
    def m(self) -> int:
        return self.Om.shape[0]

    def grow_to(self, m: int) -> None:
        """Extend to ``m`` test vectors in the fixed chunk schedule 8, 16, 32, ..."""
        if m >= self.p:
            raise ValueError(f"{self.name}: {m} test vectors need m < p = {self.p}")
        while self.m < m:
            self._extend(min(max(FIRST_LEVEL, 2 * self.m), m))

    def _fill(self, rows: list[int]) -> torch.Tensor:
        """Random directions (independent of the test vectors) for rank-deficient chunks."""
        return torch.cat([
            probe_block(
                self.p, range(i, i + 1), seed=self.seed, stream=f"{self.stream}:fill",
                kind="gaussian", device=self.op.device,
            )
            for i in rows
        ])  # fmt: skip

    def _extend(self, m_new: int) -> None:
        start, p = self.m, self.p
        Om = probe_block(
            p, range(start, m_new), seed=self.seed, stream=self.stream, kind=self.probe,
            dtype=torch.float64, device=self.op.device,
        )  # fmt: skip
        if self.normalize:
            Om = Om * (math.sqrt(p) / Om.norm(dim=1, keepdim=True))
        Y = apply_blocks(
            self.op, Om, self.block_size, what=f"{self.name}: test vector", first=start
        )
        self.matvecs += Om.shape[0]
        self.scale = max(self.scale, float(Y.norm(dim=1).max()))
        # New directions: SVD of the part of Y orthogonal to Q; negligible directions
        # (rank deficiency) are replaced by random ones so Q keeps m orthonormal rows.
        V = project_out(Y, self.Q)
        Qc, Rc = torch.linalg.qr(V.T)
        Ur, sig, _ = torch.linalg.svd(Rc)
        good = sig > FILL_TOL * self.scale if self.scale > 0 else torch.zeros_like(sig, dtype=bool)
        N = (Qc @ Ur[:, good]).T
        n_bad = int((~good).sum())
        if n_bad:
            bad_rows = list(range(start + N.shape[0], m_new))
            N = torch.cat([N, self._fill(bad_rows)])
        N = torch.linalg.qr(project_out(N, self.Q).T)[0].T.contiguous()
        Z = apply_blocks(
            self.op, N, self.block_size, what=f"{self.name}: basis vector", first=start
        )
        self.matvecs += N.shape[0]
        Q = torch.cat([self.Q, N])
        R = torch.zeros((m_new, m_new), dtype=torch.float64, device=self.op.device)
        R[:start, :start] = self.R
        R[:, start:] = Q @ Y.T
        self.Om = torch.cat([self.Om, Om])
        self.Q, self.Z, self.R = Q, torch.cat([self.Z, Z]), R
        self.dOmY = torch.cat([self.dOmY, (Om * Y).sum(dim=1)])
        self._deficient = None

    @property
    def deficient(self) -> bool:
        """``R`` is numerically singular: use the whole basis for every test vector."""
        if self._deficient is None:
            sv = torch.linalg.svdvals(self.R)
            smax = float(sv.max()) if sv.numel() else 0.0
            self._deficient = smax == 0.0 or float(sv.min()) <= RANK_TOL * smax
        return self._deficient

    def S(self) -> torch.Tensor:
        """Columns :math:`s_i = R^{-\\top} e_i / \\lVert R^{-\\top} e_i \\rVert`."""
        eye = torch.eye(self.m, dtype=torch.float64, device=self.R.device)
        S = torch.linalg.solve(self.R.T, eye)
        return S / S.norm(dim=0, keepdim=True)

    def H(self) -> torch.Tensor:
        H = self.Q @ self.Z.T
        return (H + H.T) / 2


def _xtrace_samples(sk: _Sketch, improved: bool) -> torch.Tensor:
    """The ``m`` exchangeable leave-one-out estimates :math:`\\hat t_i` (float64, CPU)."""
    m, p = sk.m, sk.p
    H, R = sk.H(), sk.R
    W = sk.Q @ sk.Om.T  # column i: w_i = coordinates of ω_i
    if sk.deficient:
        U, base, dof = W, torch.trace(H), p - m
    else:
        S = sk.S()
        alpha = (S * W).sum(dim=0)
        U = W - S * alpha
        base = torch.trace(H) - (S * (H @ S)).sum(dim=0)
        dof = p - m + 1
    resid = sk.dOmY - 2 * (U * R).sum(dim=0) + (U * (H @ U)).sum(dim=0)
    if improved:
        norm2 = (sk.Om * sk.Om).sum(dim=1) - (U * U).sum(dim=0)
        resid = resid * (dof / norm2.clamp_min(torch.finfo(torch.float64).tiny))
    return (base + resid).cpu()


def _xtrace_jackknife(sk: _Sketch, improved: bool, x: torch.Tensor) -> torch.Tensor:
    r"""The ``m`` leave-one-test-vector-out XTrace estimates :math:`T_{(j)}` (float64, CPU).

    :math:`T_{(j)}` is XTrace on the other :math:`m - 1` test vectors: entry ``[i, j]`` below
    is :math:`\hat t_i` with the leave-two-out basis :math:`Q(I - P_{ij})`,
    :math:`P_{ij}` the projector onto :math:`\operatorname{span}(s_i, s_j)`. ``x`` are the
    :math:`\hat t_i` (used when the sketch is rank deficient: then every basis is the whole
    :math:`Q` and :math:`T_{(j)}` is the mean of the other :math:`\hat t_i`).
    """
    m, p = sk.m, sk.p
    if sk.deficient:
        return (x.sum() - x) / (m - 1)
    H, R, S = sk.H(), sk.R, sk.S()
    W = sk.Q @ sk.Om.T
    K = S.T @ S  # cosines between the s_i
    B = S.T @ H @ S
    SW, SR, SHW = S.T @ W, S.T @ R, S.T @ (H @ W)  # entry [j, i]: s_jᵀ(w_i, r_i, H w_i)
    dB = B.diagonal()
    # Coefficients of P_ij w_i = b1 s_i + b2 s_j (2x2 Gram solve; row i, column j).
    c = K
    det = (1 - c * c).clamp_min(torch.finfo(torch.float64).eps)
    a1, a2 = SW.diagonal()[:, None], SW.T
    b1, b2 = (a1 - c * a2) / det, (a2 - c * a1) / det
    tr_ph = (dB[:, None] + dB[None, :] - 2 * c * B) / det
    w_r = (W * R).sum(dim=0)[:, None]
    w_hw = (W * (H @ W)).sum(dim=0)[:, None]
    u_r = w_r - b1 * SR.diagonal()[:, None] - b2 * SR.T
    u_hu = (
        w_hw - 2 * (b1 * SHW.diagonal()[:, None] + b2 * SHW.T)
        + b1 * b1 * dB[:, None] + 2 * b1 * b2 * B + b2 * b2 * dB[None, :]
    )  # fmt: skip
    resid = sk.dOmY[:, None] - 2 * u_r + u_hu
    if improved:
        w_w = (W * W).sum(dim=0)[:, None]
        norm2 = (sk.Om * sk.Om).sum(dim=1)[:, None] - w_w + (a1 * b1 + a2 * b2)
        resid = resid * ((p - m + 2) / norm2.clamp_min(torch.finfo(torch.float64).tiny))
    T = torch.trace(H) - tr_ph + resid
    T.fill_diagonal_(0.0)
    return (T.sum(dim=0) / (m - 1)).cpu()


def _jackknife_stderr(loo: torch.Tensor) -> float:
    r""":math:`\sqrt{\tfrac{m-1}{m}\sum_j (T_{(j)} - \bar T_{(\cdot)})^2}`."""
    m = loo.numel()
    return math.sqrt((m - 1) / m * float(((loo - loo.mean()) ** 2).sum()))


def _levels(
    sk: _Sketch,
    *,
    num_matvecs: int | None,
    target: Callable[[float], float] | None,
    max_matvecs: int,
    accept: Callable[[], bool],
) -> tuple[str, bool]:
    """Fixed budget (``target is None``: ``num_matvecs // 2`` test vectors), or grow ``sk`` by
    doubling from :data:`FIRST_LEVEL` test vectors until ``accept()``.

    Returns:
        ``("sketch", converged)`` when the last level of ``sk`` is the answer, or
        ``("exact", True)`` when the budget covers ``p`` products (fixed) or the next level
        would cost at least ``p`` products and ``p`` more fit in the budget (adaptive); the
        caller then computes the exact answer.
    """
    p = sk.p
    if target is None:
        if num_matvecs is None or num_matvecs < 4:
            raise ValueError(
                f"{sk.name}: needs num_matvecs >= 4 (each test vector costs 2 products and the "
                f"standard error needs 2 of them), got {num_matvecs}; pass num_matvecs=4 or more"
            )
        if num_matvecs >= p:
            return "exact", True
        sk.grow_to(num_matvecs // 2)
        return "sketch", True
    m = min(FIRST_LEVEL, max_matvecs // 2)
    first = True
    while True:
        if 2 * m >= p:
            if sk.matvecs + p <= max_matvecs:
                return "exact", True
            if not first:
                return "sketch", False
            m = min(m, (p - 1) // 2)
        if m < 2:
            raise ValueError(
                f"{sk.name}: max_matvecs={max_matvecs} is too small for p={p}: an adaptive run "
                f"needs at least 4 products (2 test vectors) or p={p} for the exact answer"
            )
        sk.grow_to(m)
        first = False
        if accept():
            return "sketch", True
        m_next = 2 * m
        if 2 * m_next < p and sk.matvecs + 2 * (m_next - m) > max_matvecs:
            return "sketch", False
        m = m_next


def xtrace_estimate(
    op: CurvatureOperator,
    *,
    num_matvecs: int | None = None,
    target: Callable[[float], float] | None = None,
    max_matvecs: int = DEFAULT_MAX_MATVECS,
    seed: int = 0,
    probe: str = "rademacher",
    block_size: int = 8,
    quantity: str = "trace",
) -> Estimate:
    r"""Estimate :math:`\operatorname{tr} A` with XTrace (see the module docstring).

    Args:
        op: Symmetric operator.
        num_matvecs: Fixed product budget (at least 4): ``num_matvecs // 2`` test vectors.
            With ``num_matvecs >= p`` the trace is computed exactly from ``p`` products.
        target: ``value -> wanted standard error`` (from
            :func:`~landscape_fast.linalg.estimate.stderr_target`) for an adaptive run.
            Without it and without ``num_matvecs``: ``rtol=1e-2``.
        max_matvecs: Product budget of an adaptive run.
        seed: Seed of the test vectors (stream ``"xtrace"``).
        probe: ``"rademacher"`` (plain XTrace) or ``"gaussian"`` (improved XTrace).
        block_size: Vectors per operator product; the result does not depend on it.
        quantity: Only ``"trace"``.

    Returns:
        :class:`~landscape_fast.linalg.estimate.Estimate` with ``method="xtrace"``; its
        ``samples`` are the :math:`m` exchangeable (not independent) estimates
        :math:`\hat t_i` and ``stderr`` is the jackknife standard error (not
        ``samples.std() / sqrt(m)``).

    Raises:
        ValueError: Bad arguments (budget below 4, both a budget and a target, ...).
        FloatingPointError: A product is not finite (names the test vectors).
    """
    name = "xtrace"
    if quantity != "trace":
        raise ValueError(f"{name}: estimates traces only (quantity='trace'), got {quantity!r}")
    check_probe_kind(probe)
    if block_size < 1:
        raise ValueError(f"{name}: block_size must be >= 1, got {block_size}")
    if num_matvecs is not None and target is not None:
        raise ValueError(f"{name}: give either num_matvecs (fixed budget) or target, not both")
    if num_matvecs is None and target is None:
        target = stderr_target(DEFAULT_RTOL, None)
    p = op.shape[0]
    settings = dict(method=name, quantity="trace", probe=probe, seed=seed)
    sk = _Sketch(
        op, seed=seed, probe=probe, block_size=block_size, stream="xtrace",
        normalize=probe == "gaussian", name=name,
    )  # fmt: skip
    improved = probe == "gaussian"

    def exact() -> Estimate:
        d = _exact_diagonal(op, block_size, what=f"{name}: coordinate vector")
        value = float(d.sum())
        note = f"exact: the trace from the {p} coordinate-vector products (cheaper than XTrace)"
        return Estimate(
            value=value, stderr=0.0, n_matvecs=sk.matvecs + p,
            samples=torch.tensor([value], dtype=torch.float64),
            target_stderr=None if target is None else target(value), notes=(note,), **settings,
        )  # fmt: skip

    last: dict[int, tuple[torch.Tensor, float]] = {}

    def stats() -> tuple[torch.Tensor, float]:
        """The :math:`\\hat t_i` and the jackknife standard error of the current level."""
        if sk.m not in last:
            x = _xtrace_samples(sk, improved)
            last[sk.m] = x, _jackknife_stderr(_xtrace_jackknife(sk, improved, x))
        return last[sk.m]

    def accept() -> bool:
        x, se = stats()
        return se <= target(float(x.mean())) and (x.numel() >= MIN_SAMPLES or sk.deficient)

    how, ok = _levels(
        sk, num_matvecs=num_matvecs, target=target, max_matvecs=max_matvecs, accept=accept
    )
    if how == "exact":
        return exact()
    x, se = stats()
    notes = [f"{sk.m} test vectors ({'improved' if improved else 'plain'} XTrace)"]
    if sk.deficient:
        notes.append(
            "the sketch is rank deficient (rank(A) < m?): every test vector used the whole "
            "basis; exact if the range of A was captured"
        )
    if not ok:
        notes.append(f"max_matvecs={max_matvecs} reached before the target standard error")
    value = float(x.mean())
    tau = None if target is None else target(value)
    return Estimate(
        value=value, stderr=se, n_matvecs=sk.matvecs, samples=x, target_stderr=tau, converged=ok,
        notes=tuple(notes), **settings,
    )  # fmt: skip
