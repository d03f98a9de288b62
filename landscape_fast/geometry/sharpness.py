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
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.operators.engines import checked_loss
from landscape_fast.operators.hessian import Hessian

KINDS = ("worst", "average", "taylor")
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

    def describe(self) -> str:
        """One line: the value, what it is, and the companion quantities."""
        ada = "adaptive " if self.adaptive else ""
        head = f"{ada}{self.kind}-case {self.norm} sharpness (rho={self.rho:.3g})"
        if self.kind == "worst":
            head += f" >= {self.value:.6g} (PGA lower bound)"
        elif self.kind == "average":
            head += f" = {self.value:.6g} ± {self.stderr:.2g} (1 SE)"
        else:
            head += f" ≈ {self.value:.6g} (Taylor estimate, not a bound)"
        lam = "n/a" if self.lambda_max is None else f"{self.lambda_max:.4g}"
        tay = "n/a" if self.taylor is None else f"{self.taylor:.4g}"
        return f"{head}; |g|={self.grad_norm:.4g}, lambda_max={lam}, taylor={tay}"


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
    rho: float, kind: str, norm: str, steps: int, restarts: Sequence[str], num_samples: int,
    eta0: float,
) -> None:  # fmt: skip
    if not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
        raise ValueError(f"sharpness: rho must be a finite number > 0, got {rho!r}")
    if kind not in KINDS:
        raise ValueError(f"sharpness: kind must be one of {KINDS}, got {kind!r}")
    if norm not in NORMS:
        raise ValueError(f"sharpness: norm must be one of {NORMS}, got {norm!r}")
    if kind == "worst":
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
) -> float:  # fmt: skip
    """Projected normalized gradient ascent in u; step doubled on success, halved on failure.

    Returns the best :math:`L(\\theta + Tu) - L(\\theta)` seen (``steps`` gradients after the
    start point).
    """
    u = _project(u0, rho, norm)
    f, g = evaluate(t * u)
    best = f - loss0
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
    return best


def sharpness(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    rho: float,
    kind: str = "worst",
    norm: str = "l2",
    adaptive: bool = False,
    *,
    steps: int = 20,
    restarts: Sequence[str] = RESTARTS,
    num_samples: int = 64,
    eta0: float = 0.01,
    params: Any = None,
    batch_norm: str = "eval",
    seed: int = 0,
    compute_lambda_max: bool = True,
    dtype: torch.dtype | None = None,
) -> Sharpness:
    r"""ρ-sharpness of ``model`` at its current parameters (see the module docstring).

    Args:
        model: The model (left exactly as it was).
        loss_fn, data: As for :class:`~landscape_fast.Hessian` (a mean-reduced loss or name;
            an ``(inputs, targets)`` pair or a re-iterable of batches).
        rho: Radius :math:`\rho > 0` (in the :math:`T^{-1}`-scaled coordinates if adaptive).
        kind: ``"worst"`` (PGA lower bound), ``"average"`` (Gaussian Monte Carlo) or
            ``"taylor"`` (:math:`\rho\lVert Tg\rVert_* + \rho^2\lambda_{\max}c/2`).
        norm: ``"l2"`` or ``"linf"`` ball (``"average"``: ``"l2"`` only).
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
        params: Parameter selection (see :class:`~landscape_fast.params.ParamSpace`).
        batch_norm: ``"eval"`` or ``"batch"`` (see the operators).
        seed: Seed of the random restart, of the Monte-Carlo draws and of eigsh.
        compute_lambda_max: Compute :math:`\lambda_{\max}` (Lanczos) for ``lambda_max`` and
            ``taylor``; always done for ``kind="taylor"`` or an ``"eigenvector"`` restart.
        dtype: Compute dtype (e.g. ``torch.float64`` for a float32 model).

    Returns:
        :class:`Sharpness`.

    Raises:
        ValueError: For a non-positive or non-finite ``rho``, an unknown ``kind``/``norm``/
            restart, ``steps < 1``, or ``num_samples < 2`` in the average case.
    """
    _check_args(rho, kind, norm, steps, restarts, num_samples, eta0)
    rho = float(rho)
    op = Hessian(model, loss_fn, data, params, batch_norm=batch_norm, dtype=dtype)
    evaluate = _Evaluator(op)
    wdtype, device = op.dtype, op.device
    theta0 = evaluate.theta0.to(wdtype)
    if adaptive:
        t = theta0.abs() + eta0
    else:
        t = torch.ones_like(theta0)
    notes: list[str] = []
    if adaptive and bool((t == 0).any()):
        notes.append("eta0=0 and some parameters are exactly 0: those coordinates cannot move")

    zero = torch.zeros_like(theta0)
    loss0, g = evaluate(zero)
    tg = t * g
    grad_norm = float(tg.norm())
    dual = float(tg.abs().sum()) if norm == "linf" else grad_norm

    need_eig = compute_lambda_max or kind == "taylor"
    need_eig = need_eig or (kind == "worst" and "eigenvector" in restarts)
    lam: float | None = None
    q: torch.Tensor | None = None
    n_matvecs = 0
    if need_eig:
        A = op if not adaptive else _Congruence(op, t)
        res = eigsh(A, k=1, which="LA", seed=seed)
        lam, q = float(res.eigenvalues[0]), res.eigenvectors[0].to(wdtype)
        n_matvecs = res.n_matvecs
        if not bool(res.converged[0]):
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
    gen = torch.Generator(device="cpu").manual_seed(seed)

    if kind == "worst":
        starts: list[tuple[str, torch.Tensor]] = []
        for r in dict.fromkeys(restarts):
            if r == "gradient":
                d = _direction(tg, norm)
                if d is None:
                    notes.append("g = 0: the gradient restart starts at epsilon = 0")
                    starts.append(("gradient", zero))
                else:
                    starts.append(("gradient", rho * d))
            elif r == "eigenvector":
                assert q is not None
                qs = q / float(q.abs().max()) if norm == "linf" else q
                starts += [("+eigenvector", rho * qs), ("-eigenvector", -rho * qs)]
            else:
                z = torch.randn(theta0.shape[0], generator=gen, dtype=torch.float64)
                z = z.to(device=device, dtype=wdtype)
                starts.append(("random", rho * (torch.sign(z) if norm == "linf" else z / z.norm())))
        for name, u0 in starts:
            restart_values[name] = _ascent(evaluate, t, u0, loss0, rho, norm, steps)
        value = max(0.0, *restart_values.values())
        settings.update(steps=steps, restarts=tuple(dict.fromkeys(restarts)))
    elif kind == "average":
        samples = torch.empty(num_samples, dtype=torch.float64)
        for i in range(num_samples):
            z = torch.randn(theta0.shape[0], generator=gen, dtype=torch.float64)
            delta = rho * t * z.to(device=device, dtype=wdtype)
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
        is_lower_bound=kind == "worst",
        grad_norm=grad_norm,
        lambda_max=lam,
        taylor=taylor,
        loss=loss0,
        restart_values=restart_values,
        estimate=estimate,
        settings=settings,
        notes=tuple(notes),
    )
