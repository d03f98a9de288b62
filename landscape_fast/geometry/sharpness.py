r"""ρ-sharpness of a loss landscape: worst case (a certified lower bound), average case, Taylor.

With :math:`L(\theta)` the sample-weighted mean loss over the data (the operators'
convention), :math:`g = \nabla L(\theta)`, :math:`H = \nabla^2 L(\theta)` and the scaling
:math:`T = I` or, when ``adaptive=True`` (ASAM, Kwon et al. 2021),
:math:`T = \operatorname{diag}(|\theta_i| + \eta_0)`:

- **worst case** (``kind="worst"``)

  .. math::

      S_\rho = \max_{\lVert T^{-1}\varepsilon\rVert_p \le \rho} L(\theta+\varepsilon) - L(\theta),
      \qquad p \in \{2, \infty\}.

  The maximum is non-convex; it is approached by projected gradient ascent in
  :math:`u = T^{-1}\varepsilon` from several starts (the first-order maximiser
  :math:`\varepsilon^* = \rho T^2 g/\lVert Tg\rVert_2` for :math:`p=2`,
  :math:`\rho\,T\operatorname{sign}(g)` for :math:`p=\infty`; :math:`\pm\rho q_1` with
  :math:`q_1` the top eigenvector of :math:`THT`; a seeded random point on the sphere). The
  result is the best value found, a **lower bound** of :math:`S_\rho` (``is_lower_bound``).
- **average case** (``kind="average"``)

  .. math::

      S^{\mathrm{avg}}_\rho = \mathbb E_{\delta\sim N(0,\rho^2 T^2)} L(\theta+\delta) - L(\theta)
      = \tfrac{\rho^2}{2}\operatorname{tr}(THT) + O(\rho^4),

  a Monte-Carlo :class:`~landscape_fast.linalg.estimate.Estimate` with antithetic pairs
  :math:`\tfrac12[L(\theta+\delta)+L(\theta-\delta)] - L(\theta)` (same mean; the odd orders
  cancel). With ``eta0=0`` the adaptive covariance is :math:`\rho^2\operatorname{diag}(\theta^2)`.
- **Taylor** (``kind="taylor"``, and the ``taylor`` field of every result)

  .. math::

      S_\rho \approx \rho\,\lVert Tg\rVert_{q} + \tfrac{\rho^2}{2}\lambda_{\max}(THT)\,c_p ,

  with the dual norm :math:`q = 2` for :math:`p = 2` and :math:`q = 1` for :math:`p=\infty`;
  :math:`c_2 = 1`, and :math:`c_\infty = 1/\lVert q_1\rVert_\infty^2` (the quadratic term along
  :math:`q_1` scaled onto the :math:`\ell_\infty` sphere; the true :math:`\ell_\infty`
  quadratic maximum lies between that and :math:`d\,\rho^2\lambda_{\max}/2`). It is an
  *estimate*, neither a bound: valid only when :math:`\rho` is small against the scale on
  which the Hessian changes (:math:`\rho \ll \lambda_{\max}/M_3`, :math:`M_3` the Hessian's
  Lipschitz constant). THEORY.md C1: the bare ":math:`\rho^2\lambda_{\max}/2`" is wrong off
  critical points (a linear loss has :math:`S_\rho = \rho\lVert g\rVert` and
  :math:`\lambda_{\max} = 0`), so it is never reported alone.

- **m-sharpness** (``kind="worst"``, ``m=...``; Foret et al. 2021, Andriushchenko et al.
  2023): with :math:`B_1,\dots,B_K` disjoint batches of :math:`m` samples (seeded shuffle,
  the short last batch dropped, optionally a seeded subsample of ``max_batches``),

  .. math::

      S^{(m)}_\rho = \frac1K \sum_{k=1}^K \max_{\lVert T^{-1}\varepsilon\rVert_p\le\rho}
      L_{B_k}(\theta+\varepsilon) - L_{B_k}(\theta),

  each inner maximum by the same PGA (so the mean is again a lower bound), reported with its
  standard error over batches. ``m = N`` is the plain worst case.
- **Keskar ε-sharpness** (``kind="keskar"``, Keskar et al. 2017, full space :math:`A = I`)

  .. math::

      \phi_\epsilon = \frac{100\,[\max_{y\in C_\epsilon} L(\theta+y) - L(\theta)]}
      {1 + L(\theta)},\qquad C_\epsilon = \{y : |y_i| \le \epsilon(|\theta_i|+1)\}.

  The box is the :math:`\ell_\infty` ball of radius :math:`\epsilon` with
  :math:`T = \operatorname{diag}(|\theta|+1)`, maximised by the same projected sign-gradient
  ascent and restarts (Keskar et al. used L-BFGS-B); the result is a **lower bound** of
  :math:`\phi_\epsilon`.
- **Corrected Lemmas 3.1/3.2** (THEORY.md C1; worst case, l2, not adaptive): the fields
  ``lemma_3_2_lower`` :math:`= \max(L(\theta\pm\rho q_1)) - L(\theta) \le S_\rho` (a valid
  lower bound at any :math:`\theta`) and ``lemma_3_1_upper_at_theta``
  :math:`= \rho\lVert g\rVert + \rho^2\lambda_{\max}(H(\theta))/2`, the corrected upper bound
  with :math:`\lambda_{\max}` taken at :math:`\theta` instead of its supremum over the ball:
  an estimate of that bound, not a certified one.

All evaluations go through ``torch.func.functional_call`` (the model's parameters are never
written) in the operators' model semantics (BatchNorm ``"eval"``/``"batch"``); the model is
left exactly as it was (parameters, buffers, train/eval mode, ``.grad``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from landscape_fast.geometry.sharpness import sharpness
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 1, bias=False).double()
    >>> X, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    >>> s = sharpness(model, "mse", (X, y), rho=0.05)
    >>> s.is_lower_bound, s.value > 0, s.value <= s.taylor + 1e-12   # exact quadratic
    (True, True, True)
    >>> a = sharpness(model, "mse", (X, y), rho=0.05, kind="average", num_samples=16)
    >>> exact = 0.05**2 * float(2 * X.square().sum() / 32) / 2   # rho^2 tr(H) / 2
    >>> abs(a.value - exact) < 4 * a.stderr
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import autograd, nn

from landscape_fast.linalg.eigsh import eigsh
from landscape_fast.linalg.estimate import Estimate
from landscape_fast.linalg.result import EigenResult
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.operators.engines import checked_loss
from landscape_fast.operators.hessian import Hessian

KINDS = ("worst", "average", "taylor", "keskar")
NORMS = ("l2", "linf")
RESTARTS = ("gradient", "eigenvector", "random")

TAYLOR_VALIDITY = (
    "Taylor estimate rho*||Tg||_* + rho^2*lambda_max(THT)*c/2: an estimate, neither an upper nor "
    "a lower bound; meaningful only when rho is small against the scale on which the Hessian "
    "changes (rho << lambda_max/M3). Off critical points the first-order term dominates for "
    "rho < 2||g||/lambda_max."
)


@dataclass(frozen=True)
class Sharpness:
    """A ρ-sharpness value and everything needed to read it.

    Attributes:
        kind: ``"worst"``, ``"average"`` or ``"taylor"``.
        rho: Radius ρ (of the ball, or the std of the Gaussian perturbation).
        norm: ``"l2"`` or ``"linf"`` (the ball's norm; average case: ``"l2"``).
        adaptive: Whether the ball is scaled by :math:`T = \\operatorname{diag}(|\\theta|+\\eta_0)`.
        value: worst: best :math:`L(\\theta+\\varepsilon) - L(\\theta)` found (a lower bound);
            average: the Monte-Carlo mean; taylor: the Taylor estimate.
        stderr: Standard error of ``value`` (average case only, else ``None``).
        is_lower_bound: ``True`` for the worst case (the true maximum is ``>= value``).
        grad_norm: :math:`\\lVert Tg\\rVert_2` (the gradient's norm in the metric of the ball).
        lambda_max: :math:`\\lambda_{\\max}(THT)` (:math:`\\lambda_{\\max}(H)` if not adaptive),
            ``None`` if not computed.
        taylor: The Taylor estimate (``None`` without ``lambda_max``).
        loss: :math:`L(\\theta)`.
        restart_values: Worst case: best value per restart, by restart name.
        estimate: Average case: the :class:`Estimate`.
        validity: When the Taylor estimate means anything.
        settings: steps, restarts, seed, num_samples, eta0, n_gradients, n_loss_evals,
            n_matvecs, batch_norm.
        notes: Anything the user should know.
        m: Batch size of m-sharpness (``None``: full-data worst case).
        lemma_3_2_lower: Worst case, l2, not adaptive, no ``m``: the corrected Lemma 3.2
            bound :math:`\\max(L(\\theta+\\rho q_1), L(\\theta-\\rho q_1)) - L(\\theta)
            \\le S_\\rho` (valid at any :math:`\\theta`; the ±eigenvector restarts' start
            values).
        lemma_3_1_upper_at_theta: Same cases: :math:`\\rho\\lVert g\\rVert +
            \\rho^2\\lambda_{\\max}(\\theta)/2`, the corrected Lemma 3.1 bound *evaluated with*
            :math:`\\lambda_{\\max}` *at* :math:`\\theta` instead of
            :math:`\\sup_{\\lVert\\varepsilon\\rVert\\le\\rho}\\lambda_{\\max}(H(\\theta+
            \\varepsilon))`: an estimate of the bound, not a certified bound.
    """

    kind: str
    rho: float
    norm: str
    adaptive: bool
    value: float
    stderr: float | None
    is_lower_bound: bool
    grad_norm: float
    lambda_max: float | None
    taylor: float | None
    loss: float
    restart_values: dict[str, float] = field(default_factory=dict)
    estimate: Estimate | None = None
    validity: str = TAYLOR_VALIDITY
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    m: int | None = None
    lemma_3_2_lower: float | None = None
    lemma_3_1_upper_at_theta: float | None = None

    def describe(self) -> str:
        """One line: the value, what it is, and the companion quantities."""
        ada = "adaptive " if self.adaptive else ""
        head = f"{ada}{self.kind}-case {self.norm} sharpness (rho={self.rho:.3g})"
        if self.kind == "worst" and self.m is not None:
            head = f"{ada}m-sharpness {self.norm} (m={self.m}, rho={self.rho:.3g})"
            head += f" >= {self.value:.6g} ± {self.stderr:.2g} (mean of per-batch PGA maxima)"
        elif self.kind == "worst":
            head += f" >= {self.value:.6g} (PGA lower bound)"
        elif self.kind == "keskar":
            head = f"Keskar phi (epsilon={self.rho:.3g}) >= {self.value:.6g} (box PGA bound)"
        elif self.kind == "average":
            cov = "ρ²(|θ|+η₀)²" if self.adaptive else "ρ² I"
            head = f"{ada}average sharpness, δ ~ N(0, {cov}) per coordinate (rho={self.rho:.3g})"
            head += f" = {self.value:.6g} ± {self.stderr:.2g} (1 SE)"
        else:
            head += f" ≈ {self.value:.6g} (Taylor estimate, not a bound)"
        lam = "n/a" if self.lambda_max is None else f"{self.lambda_max:.4g}"
        tay = "n/a" if self.taylor is None else f"{self.taylor:.4g}"
        out = f"{head}; |g|={self.grad_norm:.4g}, lambda_max={lam}, taylor={tay}"
        if self.lemma_3_2_lower is not None:
            out += f"; L3.2 lower={self.lemma_3_2_lower:.4g}"
        if self.lemma_3_1_upper_at_theta is not None:
            ub = self.lemma_3_1_upper_at_theta
            out += f", L3.1 upper with lambda_max at theta (an estimate)={ub:.4g}"
        return out


class _Congruence(CurvatureOperator):
    """:math:`T A T` for a diagonal :math:`T` (a ``(p,)`` vector)."""

    def __init__(self, op: CurvatureOperator, t: torch.Tensor) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op, self.t = op, t
        self.preferred_block_size = op.preferred_block_size

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.matmat(V * self.t).mul_(self.t)


class _Evaluator:
    """Full-data :math:`L(\\theta_0 + \\varepsilon)` and gradient; the model is not written."""

    def __init__(self, op: Hessian) -> None:
        self.op = op
        self.theta0 = op.space.flatten(dtype=op.compute_dtype)
        self.n_gradients = 0
        self.n_loss_evals = 0

    def __call__(self, eps: torch.Tensor, grad: bool = True) -> tuple[float, torch.Tensor | None]:
        op = self.op
        x = (self.theta0 + eps.to(op.compute_dtype)).detach().requires_grad_(grad)
        theta = op.space.views(x)
        total, loss_sum = 0, 0.0
        out = torch.zeros(op.shape[0], dtype=op.dtype, device=op.device) if grad else None
        with op.semantics() as sem, torch.set_grad_enabled(grad):
            for index, batch, n in op.batches(sem):
                if n == 0:
                    continue
                loss = checked_loss(op.f, theta, batch, index)
                if grad:
                    (gx,) = autograd.grad(loss, x)
                    op._check_finite(gx[None], index, "gradient")
                    out.add_(gx.to(op.dtype), alpha=float(n))
                loss_sum += float(loss.detach()) * n
                total += n
        if total == 0:
            raise ValueError("sharpness: the data holds no samples")
        if grad:
            self.n_gradients += 1
            out.div_(total)
        else:
            self.n_loss_evals += 1
        return loss_sum / total, out


def _check_args(
    rho: float | None, kind: str, norm: str | None, steps: int, restarts: Sequence[str],
    num_samples: int, eta0: float, adaptive: bool = False, m: int | None = None,
    max_batches: int | None = None, epsilon: float = 1e-3,
) -> str:  # fmt: skip
    """Validate the arguments; returns the resolved norm."""
    if kind not in KINDS:
        raise ValueError(f"sharpness: kind must be one of {KINDS}, got {kind!r}")
    if kind == "keskar":
        if rho is not None:
            raise ValueError(
                "sharpness: kind='keskar' takes epsilon=..., not rho (its box is "
                "|y_i| <= epsilon*(|theta_i|+1))"
            )
        if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
            raise ValueError(f"sharpness: epsilon must be a finite number > 0, got {epsilon!r}")
        if norm not in (None, "linf") or adaptive:
            raise ValueError(
                "sharpness: kind='keskar' uses its own box (an linf ball scaled by |theta|+1); "
                "leave norm and adaptive unset"
            )
        norm = "linf"
    elif not isinstance(rho, int | float) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"sharpness: rho must be a finite number > 0, got {rho!r}")
    norm = "l2" if norm is None else norm
    if norm not in NORMS:
        raise ValueError(f"sharpness: norm must be one of {NORMS}, got {norm!r}")
    if kind in ("worst", "keskar"):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"sharpness: steps must be an int >= 1, got {steps!r}")
        if isinstance(restarts, str) or not restarts:
            raise ValueError(
                f"sharpness: restarts must be a non-empty tuple drawn from {RESTARTS}, "
                f"got {restarts!r}"
            )
        unknown = [r for r in restarts if r not in RESTARTS]
        if unknown:
            raise ValueError(f"sharpness: unknown restarts {unknown}; use some of {RESTARTS}")
    if m is not None:
        if kind != "worst":
            raise ValueError(f"sharpness: m= (m-sharpness) needs kind='worst', got {kind!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"sharpness: m must be an int >= 1, got {m!r}")
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ValueError(f"sharpness: max_batches must be an int >= 1, got {max_batches!r}")
    if kind == "average":
        if not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(
                f"sharpness: kind='average' needs num_samples >= 2 for a standard error, got "
                f"{num_samples!r}; use e.g. num_samples=64"
            )
        if norm != "l2":
            raise ValueError(
                "sharpness: kind='average' draws Gaussian perturbations; use norm='l2'"
            )
    if not math.isfinite(eta0) or eta0 < 0:
        raise ValueError(f"sharpness: eta0 must be finite and >= 0, got {eta0!r}")
    return norm


def _project(u: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return u.clamp(-rho, rho)
    n = float(u.norm())
    return u * (rho / n) if n > rho else u


def _direction(tg: torch.Tensor, norm: str) -> torch.Tensor | None:
    """Steepest ascent direction of unit norm for gradient ``tg`` in u-coordinates."""
    if norm == "linf":
        d = torch.sign(tg)
        return d if bool(d.any()) else None
    n = float(tg.norm())
    return tg / n if n > 0 else None


def _ascent(
    evaluate: _Evaluator, t: torch.Tensor, u0: torch.Tensor, loss0: float, rho: float,
    norm: str, steps: int,
) -> tuple[float, float]:  # fmt: skip
    """Projected normalized gradient ascent in u; step ×1.5 on success, halved on failure.

    Returns the best :math:`L(\\theta + Tu) - L(\\theta)` seen (``steps`` gradients after the
    start point) and the value at the (projected) start point.
    """
    u = _project(u0, rho, norm)
    f, g = evaluate(t * u)
    best = start = f - loss0
    alpha = rho
    for _ in range(steps):
        d = _direction(t * g, norm)
        if d is None:
            break
        u_new = _project(u + alpha * d, rho, norm)
        if float((u_new - u).norm()) <= 1e-10 * rho:
            break  # a fixed point of the projected step
        f_new, g_new = evaluate(t * u_new)
        if f_new > f:
            u, f, g = u_new, f_new, g_new
            best = max(best, f - loss0)
            alpha = min(2.0 * rho, 1.5 * alpha)
        else:
            alpha *= 0.5
    return best, start


def _top_eig(
    op: Hessian, t: torch.Tensor, scaled: bool, seed: int
) -> tuple[float, torch.Tensor, int, bool]:
    """:math:`\\lambda_{\\max}` and :math:`q_1` of :math:`THT` (of :math:`H` if not ``scaled``)."""
    A = _Congruence(op, t) if scaled else op
    res = eigsh(A, k=1, which="LA", seed=seed)
    q = res.eigenvectors[0].to(op.dtype)
    return float(res.eigenvalues[0]), q, res.n_matvecs, bool(res.converged[0])


def _pga(
    evaluate: _Evaluator, t: torch.Tensor, tg: torch.Tensor, q: torch.Tensor | None,
    loss0: float, rho: float, norm: str, steps: int, restarts: Sequence[str],
    gen: torch.Generator, notes: list[str],
) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """All restarts of the worst-case ascent in :math:`u = T^{-1}\\varepsilon`.

    Returns the best value and the start-point value of each restart, by restart name.
    """
    starts: list[tuple[str, torch.Tensor]] = []
    for r in dict.fromkeys(restarts):
        if r == "gradient":
            d = _direction(tg, norm)
            if d is None:
                if "g = 0: the gradient restart starts at epsilon = 0" not in notes:
                    notes.append("g = 0: the gradient restart starts at epsilon = 0")
                starts.append(("gradient", torch.zeros_like(tg)))
            else:
                starts.append(("gradient", rho * d))
        elif r == "eigenvector":
            assert q is not None
            qs = q / float(q.abs().max()) if norm == "linf" else q
            starts += [("+eigenvector", rho * qs), ("-eigenvector", -rho * qs)]
        else:
            z = torch.randn(tg.shape[0], generator=gen, dtype=torch.float64)
            z = z.to(device=tg.device, dtype=tg.dtype)
            starts.append(("random", rho * (torch.sign(z) if norm == "linf" else z / z.norm())))
    best: dict[str, float] = {}
    first: dict[str, float] = {}
    for name, u0 in starts:
        best[name], first[name] = _ascent(evaluate, t, u0, loss0, rho, norm, steps)
    return best, first


def _m_batches(
    data: Any, m: int, max_batches: int | None, seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, int]:
    """Disjoint batches of ``m`` samples of a seeded shuffle of ``data``; the short last batch
    (``N mod m`` samples) is dropped. Returns the (possibly subsampled) batches, :math:`N` and
    the number of full batches before subsampling."""
    if not (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(x, torch.Tensor) for x in data)
    ):
        raise ValueError(
            "sharpness: m-sharpness needs data=(inputs, targets) tensors to split into batches "
            "of m samples"
        )
    X, y = data
    n = int(X.shape[0]) if X.dim() > 0 else 0
    if n == 0 or y.dim() == 0 or int(y.shape[0]) != n:
        raise ValueError("sharpness: data=(inputs, targets) needs the same leading dimension")
    if m > n:
        raise ValueError(f"sharpness: m must be <= the number of samples ({n}), got {m}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    k = n // m
    chosen = list(range(k))
    if max_batches is not None and max_batches < k:
        sub = torch.randperm(k, generator=gen)[:max_batches]
        chosen = sorted(int(i) for i in sub)
    out = []
    for i in chosen:
        idx = perm[i * m : (i + 1) * m].to(X.device)
        out.append((X[idx], y[idx.to(y.device)]))
    return out, n, k


def sharpness(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    rho: float | None = None,
    kind: str = "worst",
    norm: str | None = None,
    adaptive: bool = False,
    *,
    steps: int = 20,
    restarts: Sequence[str] = RESTARTS,
    num_samples: int = 64,
    eta0: float = 0.01,
    m: int | None = None,
    max_batches: int | None = None,
    epsilon: float = 1e-3,
    params: Any = None,
    batch_norm: str = "eval",
    seed: int = 0,
    compute_lambda_max: bool = True,
    dtype: torch.dtype | None = None,
    top: EigenResult | None = None,
) -> Sharpness:
    r"""ρ-sharpness of ``model`` at its current parameters (see the module docstring).

    Args:
        model: The model (left exactly as it was).
        loss_fn, data: As for :class:`~landscape_fast.Hessian` (a mean-reduced loss or name;
            an ``(inputs, targets)`` pair or a re-iterable of batches).
        rho: Radius :math:`\rho > 0` (in the :math:`T^{-1}`-scaled coordinates if adaptive).
            Required except for ``kind="keskar"`` (which takes ``epsilon`` and no ``rho``).
        kind: ``"worst"`` (PGA lower bound), ``"average"`` (Gaussian Monte Carlo),
            ``"taylor"`` (:math:`\rho\lVert Tg\rVert_* + \rho^2\lambda_{\max}c/2`) or
            ``"keskar"`` (Keskar's :math:`\phi_\varepsilon`, a lower bound).
        norm: ``"l2"`` (default) or ``"linf"`` ball (``"average"``: ``"l2"`` only;
            ``"keskar"``: its box, ``"linf"``).
        adaptive: Scale by :math:`T = \operatorname{diag}(|\theta| + \eta_0)`.
        steps: Gradient evaluations per restart after its start point (worst case). The step
            in :math:`u = T^{-1}\varepsilon` is :math:`\alpha\,Tg/\lVert Tg\rVert_2` (l2) or
            :math:`\alpha\operatorname{sign}(g)` (linf), :math:`\alpha_0 = \rho`, ×1.5 after
            an improving step (at most :math:`2\rho`), ×½ after a failed one; the best value
            seen is kept.
        restarts: Any of ``"gradient"`` (first-order maximiser), ``"eigenvector"``
            (:math:`\pm\rho q_1`, both signs) and ``"random"`` (seeded point on the sphere).
        num_samples: Antithetic Monte-Carlo pairs (average case; 2 loss passes each).
        eta0: :math:`\eta_0` of the adaptive scaling (0 makes it exactly invariant to
            rescaling of the parameters, but freezes parameters that are exactly 0).
        m: m-sharpness (``kind="worst"`` only): the mean over disjoint batches of ``m``
            samples of each batch's worst case (``data`` must be an ``(inputs, targets)``
            pair; seeded shuffle; the short last batch of :math:`N \bmod m` samples is
            dropped). ``m = N`` is the plain worst case.
        max_batches: m-sharpness: use only this many of the :math:`\lfloor N/m\rfloor`
            batches (a seeded subsample), to bound the cost.
        epsilon: Keskar's :math:`\varepsilon > 0` (``kind="keskar"``).
        params: Parameter selection (see :class:`~landscape_fast.params.ParamSpace`).
        batch_norm: ``"eval"`` or ``"batch"`` (see the operators; with ``m`` and ``"batch"``
            the statistics are those of each batch of ``m``).
        seed: Seed of the random restart, of the Monte-Carlo draws, of eigsh and of the
            m-sharpness shuffle.
        compute_lambda_max: Compute :math:`\lambda_{\max}` (Lanczos) for ``lambda_max`` and
            ``taylor``; always done for ``kind="taylor"`` or an ``"eigenvector"`` restart.
        dtype: Compute dtype (e.g. ``torch.float64`` for a float32 model).
        top: An already computed ``eigsh(H, which="LA")`` of this model, loss and data (e.g.
            from :func:`landscape_fast.analyze`): its first pair gives :math:`\lambda_{\max}`
            and :math:`q_1` when the ball is not scaled (ignored for adaptive and Keskar).

    Returns:
        :class:`Sharpness`. With ``m``, ``value``/``stderr``/``estimate`` are the mean of
        the per-batch maxima and its standard error over batches; ``loss``, ``grad_norm``,
        ``lambda_max`` and ``taylor`` stay full-data quantities.

    Raises:
        ValueError: For a missing, non-positive or non-finite ``rho``, an unknown
            ``kind``/``norm``/restart, ``steps < 1``, ``num_samples < 2`` in the average
            case, ``m`` outside ``[1, N]`` or not with ``kind="worst"``, ``max_batches < 1``,
            or ``epsilon <= 0``.
    """
    norm = _check_args(
        rho, kind, norm, steps, restarts, num_samples, eta0, adaptive, m, max_batches, epsilon
    )
    if kind == "keskar":
        rho, adaptive, eta0 = float(epsilon), False, 1.0  # the box = linf ball, T = |θ|+1
    rho = float(rho)  # type: ignore[arg-type]
    op = Hessian(model, loss_fn, data, params, batch_norm=batch_norm, dtype=dtype)
    evaluate = _Evaluator(op)
    wdtype = op.dtype
    theta0 = evaluate.theta0.to(wdtype)
    scaled = adaptive or kind == "keskar"
    t = theta0.abs() + eta0 if scaled else torch.ones_like(theta0)
    notes: list[str] = []
    if adaptive and bool((t == 0).any()):
        notes.append("eta0=0 and some parameters are exactly 0: those coordinates cannot move")

    zero = torch.zeros_like(theta0)
    loss0, g = evaluate(zero)
    tg = t * g
    grad_norm = float(tg.norm())
    dual = float(tg.abs().sum()) if norm == "linf" else grad_norm

    plain_worst = kind in ("worst", "keskar") and m is None
    need_eig = compute_lambda_max or kind == "taylor"
    need_eig = need_eig or (plain_worst and "eigenvector" in restarts)
    lam: float | None = None
    q: torch.Tensor | None = None
    n_matvecs = 0
    if need_eig and top is not None and not scaled:  # reuse the caller's eigsh(H, "LA")
        lam, q = float(top.eigenvalues[0]), top.eigenvectors[0].to(wdtype)
        if not bool(top.converged[0]):
            notes.append("eigsh did not converge: lambda_max is approximate")
    elif need_eig:
        lam, q, n_matvecs, converged = _top_eig(op, t, scaled, seed)
        if not converged:
            notes.append("eigsh did not converge: lambda_max is approximate")
    taylor: float | None = None
    if lam is not None and q is not None:
        c = 1.0 if norm == "l2" else 1.0 / float(q.abs().max()) ** 2
        taylor = rho * dual + 0.5 * rho**2 * lam * c

    settings: dict[str, Any] = {
        "seed": seed,
        "eta0": eta0 if adaptive else None,
        "batch_norm": batch_norm,
        "dtype": str(op.compute_dtype).removeprefix("torch."),
    }
    restart_values: dict[str, float] = {}
    estimate: Estimate | None = None
    stderr: float | None = None
    lemma_lower: float | None = None
    lemma_upper: float | None = None
    gen = torch.Generator(device="cpu").manual_seed(seed)

    if plain_worst:
        restart_values, start_values = _pga(
            evaluate, t, tg, q, loss0, rho, norm, steps, restarts, gen, notes
        )
        value = max(0.0, *restart_values.values())
        settings.update(steps=steps, restarts=tuple(dict.fromkeys(restarts)))
        if kind == "worst" and norm == "l2" and not adaptive and q is not None:
            # Corrected Lemma 3.2 (THEORY C1): L(θ±ρq₁) are the eigenvector restarts' starts.
            if "+eigenvector" in start_values:
                pm = (start_values["+eigenvector"], start_values["-eigenvector"])
            else:
                pm = tuple(evaluate(s * rho * q, grad=False)[0] - loss0 for s in (1.0, -1.0))
            lemma_lower = max(pm)
            lemma_upper = taylor  # ρ‖g‖ + ρ²λ_max(θ)/2: the Lemma 3.1 bound with λ_max at θ
        if kind == "keskar":
            scale = 100.0 / (1.0 + loss0)
            settings.update(epsilon=rho, max_increase=value, method="projected_sign_ascent")
            value *= scale
            restart_values = {k: v * scale for k, v in restart_values.items()}
            taylor = None if taylor is None else taylor * scale
            notes.append(
                "Keskar phi: box maximised by projected sign-gradient ascent with restarts "
                "(Keskar et al. used L-BFGS-B); a lower bound of the true phi"
            )
    elif kind == "worst":
        assert m is not None
        batches, n_total, n_full = _m_batches(data, m, max_batches, seed)
        per_batch = torch.empty(len(batches), dtype=torch.float64)
        n_grads = n_evals = 0
        for i, batch in enumerate(batches):
            bop = Hessian(model, loss_fn, batch, op.space, batch_norm=batch_norm, dtype=dtype)
            bev = _Evaluator(bop)
            bloss, bg = bev(zero)
            bq = None
            if "eigenvector" in restarts:
                _, bq, nmv, conv = _top_eig(bop, t, adaptive, seed)
                n_matvecs += nmv
                if not conv and "eigsh did not converge on some batch" not in notes:
                    notes.append("eigsh did not converge on some batch")
            best, _ = _pga(bev, t, t * bg, bq, bloss, rho, norm, steps, restarts, gen, notes)
            per_batch[i] = max(0.0, *best.values())
            n_grads += bev.n_gradients
            n_evals += bev.n_loss_evals
        evaluate.n_gradients += n_grads
        evaluate.n_loss_evals += n_evals
        fields = dict(n_matvecs=0, method="pga_per_batch", quantity="m_sharpness", probe="batch",
                      seed=seed)  # fmt: skip
        if len(batches) >= 2:
            estimate = Estimate.from_samples(per_batch, **fields)
        else:
            estimate = Estimate(value=float(per_batch[0]), stderr=math.nan, samples=per_batch,
                                **fields)  # fmt: skip
        value, stderr = float(estimate.value), float(estimate.stderr)
        settings.update(steps=steps, restarts=tuple(dict.fromkeys(restarts)), m=m,
                        n_batches=len(batches), n_full_batches=n_full,
                        n_dropped=n_total - n_full * m)  # fmt: skip
        notes.append(
            "m-sharpness: mean over batches of per-batch PGA maxima, each a lower bound of its "
            "batch's worst case, so the mean is a lower bound of the true m-sharpness (its "
            "stderr is over batches)"
        )
    elif kind == "average":
        samples = torch.empty(num_samples, dtype=torch.float64)
        for i in range(num_samples):
            z = torch.randn(theta0.shape[0], generator=gen, dtype=torch.float64)
            delta = rho * t * z.to(device=op.device, dtype=wdtype)
            fp, _ = evaluate(delta, grad=False)
            fm, _ = evaluate(-delta, grad=False)
            samples[i] = 0.5 * (fp + fm) - loss0
        estimate = Estimate.from_samples(
            samples,
            n_matvecs=0,
            method="monte_carlo_antithetic",
            quantity="average_sharpness",
            probe="gaussian",
            seed=seed,
        )
        value, stderr = float(estimate.value), float(estimate.stderr)
        settings.update(num_samples=num_samples)
    else:
        assert taylor is not None
        value = taylor
    settings.update(
        n_gradients=evaluate.n_gradients,
        n_loss_evals=evaluate.n_loss_evals,
        n_matvecs=n_matvecs,
    )
    return Sharpness(
        kind=kind,
        rho=rho,
        norm=norm,
        adaptive=bool(adaptive),
        value=float(value),
        stderr=stderr,
        is_lower_bound=kind in ("worst", "keskar"),
        grad_norm=grad_norm,
        lambda_max=lam,
        taylor=taylor,
        loss=loss0,
        restart_values=restart_values,
        estimate=estimate,
        settings=settings,
        notes=tuple(notes),
        m=m,
        lemma_3_2_lower=lemma_lower,
        lemma_3_1_upper_at_theta=lemma_upper,
    )
