r"""``lf.analyze``: every landscape quantity of a model in one call, sharing the work.

One :class:`~landscape_fast.Hessian` of the mean loss over ``data`` (eval-mode semantics by
default) serves every operator quantity; the top eigenpairs of the eigensolver are reused as
the ascent direction of the worst-case sharpness, as :math:`\lambda_{\max}` of its Taylor
value and of the stability check, and as exact point masses deflated from the spectral
density; the smallest eigenvalue feeds the condition numbers and the stability verdict.
Probes run as blocks. Quantities (:data:`QUANTITIES`), in the order they are computed:

====================  ===========================================================  ==========
name                  what                                                         cost
====================  ===========================================================  ==========
eigenvalues_top       top-``k`` eigenpairs, true residuals, convergence history    matvecs
eigenvalues_bottom    :math:`\lambda_{\min}` (negative: not a minimum)             matvecs
condition_numbers     κ_j = λ₁/λ_j, |λ_min|/λ₁ (defined for indefinite spectra)      free
trace                 :math:`\operatorname{tr}H` by Hutch++ to 1 % relative SE     matvecs
spectral_density      SLQ (8 probes × 80 steps): density, rank, negative mass,     matvecs
                      effective dimension
outliers              eigenvalues above the largest gap; SLQ outliers               free
frobenius_norm_sq     :math:`\lVert H\rVert_F^2` by Hutch++ to 1 % relative SE     matvecs
sharpness             worst (PGA lower bound), average (MC ± SE), Taylor; vs ρ     gradients
gradient_noise        tr Σ, B_simple, B_noise ± SE, SGD noise levels               gradients
stability             GD :math:`\eta\lambda_{\max}\le 2`, SGD (Wu et al.) if        matvecs
                      ``batch_size``; needs ``lr``
pac_bayes             PAC-Bayes-kl error bound; needs ``init_params``              forwards
====================  ===========================================================  ==========

``quantities="default"`` is all of them except ``stability`` without ``lr`` and
``pac_bayes`` without ``init_params``.

**Budget.** ``budget`` (seconds, or ``{"seconds": s, "matvecs": m}``) is shared among the
pending quantities in proportion to fixed weights; the time of one Hessian-vector product
and of one gradient, measured first, turn each share into settings: fewer eigenpairs and
Lanczos steps, fewer SLQ steps (then probes), fewer ascent steps, a capped Hutch++. A
quantity whose smallest useful setting does not fit is skipped, and the report says so
(``complete=False``, ``skipped``). A quantity that fails (e.g. per-sample gradients of a
loss that is not a mean of per-sample losses) is listed in ``skipped`` with the error.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import landscape_fast as lf
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> report = lf.analyze(model, "ce", (X, y), quantities=["eigenvalues_top", "trace"])
    >>> report.complete, sorted(report.quantities)
    (True, ['eigenvalues_top', 'trace'])
    >>> report["eigenvalues_top"]["converged"] == [True] * 5
    True
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from landscape_fast.linalg.eigsh import RestartRecord, eigsh
from landscape_fast.linalg.result import EigenResult
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.operators.hessian import Hessian
from landscape_fast.report.landscape_report import SCHEMA, SCHEMA_VERSION, LandscapeReport
from landscape_fast.report.landscape_report import jsonable as _js

__all__ = ["QUANTITIES", "Budget", "analyze"]

QUANTITIES = (
    "eigenvalues_top",
    "eigenvalues_bottom",
    "condition_numbers",
    "trace",
    "spectral_density",
    "outliers",
    "frobenius_norm_sq",
    "sharpness",
    "gradient_noise",
    "stability",
    "pac_bayes",
)

#: Relative weights of the budget shares (free quantities get none).
_WEIGHT = {
    "eigenvalues_top": 4.0,
    "eigenvalues_bottom": 1.5,
    "trace": 2.0,
    "spectral_density": 3.0,
    "frobenius_norm_sq": 1.0,
    "sharpness": 1.5,
    "gradient_noise": 1.5,
    "stability": 0.5,
    "pac_bayes": 1.0,
}


@dataclass(frozen=True)
class Budget:
    """Effort limit of :func:`analyze`: wall seconds and/or Hessian-vector products."""

    seconds: float | None = None
    matvecs: int | None = None

    @classmethod
    def parse(cls, budget: Any) -> Budget | None:
        """``None``, seconds (a number), a dict with ``seconds``/``matvecs``, or a Budget."""
        if budget is None or isinstance(budget, Budget):
            out = budget
        elif isinstance(budget, int | float) and not isinstance(budget, bool):
            out = cls(seconds=float(budget))
        elif isinstance(budget, dict) and set(budget) <= {"seconds", "matvecs"}:
            out = cls(budget.get("seconds"), budget.get("matvecs"))
        else:
            raise ValueError(
                f"budget must be seconds (a number) or {{'seconds': s, 'matvecs': m}}, got "
                f"{budget!r}"
            )
        if out is not None:
            if out.seconds is not None and not out.seconds > 0:
                raise ValueError(f"budget seconds must be > 0, got {out.seconds}")
            if out.matvecs is not None and not out.matvecs >= 1:
                raise ValueError(f"budget matvecs must be >= 1, got {out.matvecs}")
        return out


class _Skip(Exception):
    """A quantity does not fit the budget (the message says why)."""


class _Progress:
    """Progress lines: per quantity, and at most once a second per data pass."""

    def __init__(self, progress: bool | Callable[[str], Any] | None) -> None:
        if progress is True:
            self.out: Callable[[str], Any] | None = lambda s: print(s, file=sys.stderr, flush=True)
        elif callable(progress):
            self.out = progress
        else:
            self.out = None
        self.start = time.perf_counter()
        self.last = 0.0
        self.what = ""
        self.first = 0  # the metered operator's count when the current quantity began

    def __call__(self, msg: str) -> None:
        if self.out is not None:
            self.out(f"[{time.perf_counter() - self.start:7.1f} s] {msg}")

    def begin(self, what: str, op: CurvatureOperator) -> None:
        self.what, self.first, self.last = what, op.n_matvecs, time.perf_counter()
        self(f"{what} ...")

    def tick(self, count: int) -> None:
        now = time.perf_counter()
        if self.out is not None and now - self.last >= 1.0:
            self.last = now
            self(f"  {self.what}: {count - self.first} matvecs so far")


class _Metered(CurvatureOperator):
    """The Hessian with a progress tick after every product (one data pass each)."""

    def __init__(self, op: Hessian, progress: _Progress) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.preferred_block_size = op.preferred_block_size
        self.progress = progress

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = self.op.matmat(V)
        self.progress.tick(self.n_matvecs + V.shape[0])
        return out


class _Planner:
    """Turns the budget into per-quantity product caps and time allowances."""

    def __init__(self, budget: Budget | None, pending: list[str]) -> None:
        self.budget = budget
        self.pending = [q for q in pending if q in _WEIGHT]
        self.start = time.perf_counter()
        self.used_matvecs = 0
        self.t_hvp = math.nan
        self.t_grad = math.nan

    def allowance(
        self, name: str, need_seconds: float = 0.0, need_matvecs: float = 0.0
    ) -> tuple[float, float]:
        """``(seconds, matvecs)`` this quantity may use (``inf`` without a budget): its share
        of what is left, raised to its minimum need while the whole budget still covers it
        (so the quantities computed first are not all starved into being skipped)."""
        if self.budget is None or name not in self.pending:
            return math.inf, math.inf
        share = _WEIGHT[name] / sum(_WEIGHT[q] for q in self.pending)
        secs = mv = math.inf
        if self.budget.seconds is not None:
            left = max(self.budget.seconds - (time.perf_counter() - self.start), 0.0)
            secs = max(left * share, need_seconds) if left >= need_seconds else left * share
        if self.budget.matvecs is not None:
            left_mv = max(self.budget.matvecs - self.used_matvecs, 0)
            mv = max(left_mv * share, need_matvecs) if left_mv >= need_matvecs else left_mv * share
        return secs, mv

    def matvec_cap(self, name: str, default: int, minimum: int = 0) -> int:
        """Products this quantity may spend: its default, cut to its allowance."""
        secs, mv = self.allowance(name, minimum * self.t_hvp, minimum)
        by_time = secs / self.t_hvp if self.t_hvp > 0 else math.inf
        return int(min(default, mv, by_time))

    def done(self, name: str, matvecs: int) -> None:
        self.used_matvecs += matvecs
        if name in self.pending:
            self.pending.remove(name)


def _eig_section(
    res: EigenResult, tol: float, seconds: float, which: str, history: list[dict[str, Any]]
) -> dict[str, Any]:
    k = len(res.eigenvalues)
    n_conv = int(res.converged.sum())
    end = "top" if which == "LA" else "bottom"
    vals = ", ".join(f"{float(v):.5g}" for v in res.eigenvalues[:5])
    status = "all converged" if n_conv == k else f"{k - n_conv} of {k} NOT converged"
    return {
        "values": _js(res.eigenvalues),
        "residuals": _js(res.residuals),
        "converged": [bool(c) for c in res.converged],
        "tol": tol,
        "n_matvecs": res.n_matvecs,
        "seconds": seconds,
        "history": history,
        "history_residual": "max residual estimate / largest |Ritz value| seen",
        "describe": (
            f"{end} {k} Hessian eigenvalue(s) by thick-restart Lanczos (lf.eigsh, converged when "
            f"‖Hv−λv‖ ≤ {tol:g}·max|θ|): {vals}; {status}, {res.n_matvecs} matvecs"
        ),
    }


def _estimate_section(est: Any, what: str) -> dict[str, Any]:
    return {
        "value": float(est.value),
        "stderr": _js(float(est.stderr)),
        "n_matvecs": est.n_matvecs,
        "method": est.method,
        "converged": est.converged,
        "describe": f"{what}: {est.describe()}",
    }


def analyze(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    quantities: str | Sequence[str] = "default",
    lr: float | None = None,
    batch_size: int | None = None,
    init_params: Any = None,
    budget: Any = None,
    seed: int = 0,
    params: Any = None,
    batch_norm: str = "eval",
    dtype: torch.dtype | None = None,
    progress: bool | Callable[[str], Any] | None = None,
    name: str | None = None,
    top_k: int = 5,
    tol: float = 1e-4,
    rho: float = 0.05,
    trace_rtol: float = 0.01,
    slq_probes: int = 8,
    slq_steps: int = 80,
    chunk_size: int | str | None = "auto",
) -> LandscapeReport:
    r"""Analyze the loss landscape of ``model`` at its current parameters.

    Args:
        model, loss_fn, data, params, batch_norm, dtype: As for
            :class:`~landscape_fast.Hessian` (a mean-reduced loss or a name such as
            ``"ce"``; an ``(inputs, targets)`` pair or a re-iterable of batches).
        quantities: ``"default"`` or names from :data:`QUANTITIES`.
        lr: Learning rate :math:`\eta` for ``stability`` and the SGD noise levels.
        batch_size: SGD mini-batch size for the SGD checks (with ``lr``).
        init_params: Parameters at initialization (state dict, flat vector or module) for
            ``pac_bayes``.
        budget: ``None`` (full effort), seconds, or ``{"seconds": s, "matvecs": m}`` (see
            the module docstring).
        seed: Seed of every random choice (probes, restarts, samples).
        progress: ``None`` (silent), ``True`` (lines on stderr) or a callable taking a line.
        name: Model name for the report.
        top_k: Top eigenpairs to compute.
        tol: Eigensolver tolerance (relative residual).
        rho: Sharpness radius (L2); the sharpness-vs-ρ sweep uses ρ/4, ρ/2, ρ and 2ρ.
        trace_rtol: Target relative standard error of trace and Frobenius norm.
        slq_probes, slq_steps: Spectral-density probes and Lanczos steps.
        chunk_size: An ``(inputs, targets)`` pair is split into batches of this many samples
            for every pass; ``"auto"``: as many as keep one batch's double-backward graph
            within half the memory budget (measured on 64 samples), the whole data when it
            fits; ``None``: no split. The numbers do not depend on it with
            ``batch_norm="eval"`` (no split is made with ``"batch"``).

    Returns:
        A :class:`~landscape_fast.report.landscape_report.LandscapeReport`. The model is
        left exactly as it was.

    Raises:
        ValueError: Unknown quantities, a bad budget, ``stability`` without ``lr`` or
            ``pac_bayes`` without ``init_params``, and every input error of the Hessian
            (empty data, a non-scalar loss, shapes that do not fit).
        FloatingPointError: A non-finite loss or gradient at the current parameters.
    """
    wanted = _resolve_quantities(quantities, lr, init_params)
    data = _chunked(model, loss_fn, data, chunk_size, params, batch_norm, dtype)
    plan = _Planner(Budget.parse(budget), wanted)
    say = _Progress(progress)
    results: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []

    H = Hessian(model, loss_fn, data, params, batch_norm=batch_norm, dtype=dtype)
    p, n = H.shape[0], H.data.num_samples
    say(f"analyze: p = {p:,} parameters, N = {n:,} samples, quantities: {', '.join(wanted)}")
    t = time.perf_counter()
    loss, grad = H.loss_and_gradient()
    plan.t_grad = time.perf_counter() - t
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, p, generator=gen, dtype=torch.float64).to(H.dtype).to(H.device)
    t = time.perf_counter()
    H.matmat(v)
    plan.t_hvp = time.perf_counter() - t
    plan.used_matvecs += 1
    say(f"loss {float(loss):.6g}, one gradient {plan.t_grad:.3g} s, one HVP {plan.t_hvp:.3g} s")
    op = _Metered(H, say)
    common = dict(params=params, batch_norm=batch_norm)  # for every geometry call
    typed = dict(common, dtype=dtype)  # for those that take a compute dtype

    def run(qname: str, fn: Callable[[], tuple[dict[str, Any], Any]]) -> None:
        say.begin(qname, op)
        start = time.perf_counter()
        try:
            section, result = fn()
        except _Skip as why:
            skipped.append({"quantity": qname, "reason": str(why)})
            say(f"{qname}: skipped ({why})")
            plan.done(qname, 0)
            return
        except (ValueError, FloatingPointError, RuntimeError, NotImplementedError) as err:
            first = (str(err).strip().splitlines() or [""])[0]
            skipped.append({"quantity": qname, "reason": f"failed: {type(err).__name__}: {first}"})
            say(f"{qname}: FAILED ({type(err).__name__}: {first})")
            plan.done(qname, 0)
            return
        section.setdefault("seconds", time.perf_counter() - start)
        sections[qname], results[qname] = section, result
        plan.done(qname, int(section.get("n_matvecs") or 0))
        used = op.n_matvecs - say.first
        if used >= 3:  # learn the product cost from real runs (the first timed one pays for
            plan.t_hvp = (time.perf_counter() - start) / used  # engine selection and warm-up)
        say(f"{qname}: done in {section['seconds']:.2f} s, {section.get('n_matvecs', 0)} matvecs")

    def eigen(which: str, k: int) -> Callable[[], tuple[dict[str, Any], Any]]:
        qname = "eigenvalues_top" if which == "LA" else "eigenvalues_bottom"

        def fn() -> tuple[dict[str, Any], Any]:
            cap = plan.matvec_cap(qname, max(1000, 100 * k), minimum=12)
            kk = min(k, max(cap // 12, 0), p - 1)
            if kk < 1:
                raise _Skip(f"budget: {cap} matvecs left for it, needs at least 12")
            history: list[dict[str, Any]] = []
            seen = [abs(float(top.eigenvalues[0])) if top is not None else 0.0]

            def record(r: RestartRecord) -> None:
                # relative to the largest Ritz magnitude seen, as eigsh's tolerance is
                seen[0] = max(seen[0], *(abs(x) for x in r.ritz_values))
                rel = max(r.residuals) / seen[0] if seen[0] > 0 else math.inf
                history.append({"n_matvecs": r.n_matvecs, "max_residual": rel})

            start = time.perf_counter()
            res = eigsh(op, kk, which=which, tol=tol, max_matvecs=cap, seed=seed, callback=record)
            sec = _eig_section(res, tol, time.perf_counter() - start, which, history)
            if kk < k:
                sec["describe"] += f" (k cut from {k} to {kk} by the budget)"
            return sec, res

        return fn

    top: EigenResult | None = None
    bottom: EigenResult | None = None
    if "eigenvalues_top" in wanted:
        run("eigenvalues_top", eigen("LA", top_k))
        top = results.get("eigenvalues_top")
    if "eigenvalues_bottom" in wanted:
        run("eigenvalues_bottom", eigen("SA", 1))
        bottom = results.get("eigenvalues_bottom")
    if "condition_numbers" in wanted:
        run("condition_numbers", lambda: _conditioning(top, bottom, top_k))
    if "trace" in wanted:
        run("trace", lambda: _hutch(op, plan, "trace", trace_rtol, seed))
    if "spectral_density" in wanted:
        run("spectral_density", lambda: _density(op, plan, top, slq_probes, slq_steps, seed))
    if "outliers" in wanted:
        run("outliers", lambda: _outliers(top, results.get("spectral_density")))
    if "frobenius_norm_sq" in wanted:
        run("frobenius_norm_sq", lambda: _hutch(op, plan, "frobenius_norm_sq", trace_rtol, seed))
    if "sharpness" in wanted:
        run("sharpness", lambda: _sharpness(model, loss_fn, data, plan, top, rho, seed, typed))
    if "gradient_noise" in wanted:
        run(
            "gradient_noise",
            lambda: _noise(model, loss_fn, data, plan, lr, batch_size, seed, typed),
        )
    if "stability" in wanted:
        run("stability", lambda: _stability(H, plan, lr, batch_size, top, bottom, tol, seed))
    if "pac_bayes" in wanted:
        run("pac_bayes", lambda: _pac_bayes(model, loss_fn, data, init_params, plan, seed, common))

    total = time.perf_counter() - plan.start
    b = plan.budget
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "landscape_fast_version": _version(),
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "complete": not skipped,
        "model": {
            "name": name or type(model).__name__,
            "params": p,
            "samples": n,
            "device": str(H.device),
            "dtype": str(H.dtype).removeprefix("torch."),
            "operator": "hessian",
            "mode": batch_norm,
            "loss": _js(float(loss)),
            "grad_norm": _js(float(grad.double().norm())),
        },
        "settings": {
            "quantities": list(wanted),
            "lr": lr,
            "batch_size": batch_size,
            "budget": None if b is None else {"seconds": b.seconds, "matvecs": b.matvecs},
            "seed": seed,
            "top_k": top_k,
            "tol": tol,
            "rho": rho,
            "trace_rtol": trace_rtol,
            "slq_probes": slq_probes,
            "slq_steps": slq_steps,
            "torch": torch.__version__,
        },
        "total_seconds": total,
        "total_matvecs": plan.used_matvecs,
        "gradient_seconds": plan.t_grad,
        "hvp_seconds": plan.t_hvp,
        "skipped": skipped,
        "quantities": {q: sections[q] for q in QUANTITIES if q in sections},
    }
    say(f"analyze: finished in {total:.1f} s, {plan.used_matvecs} matvecs")
    return LandscapeReport(_js(report), results)


def _version() -> str:
    from landscape_fast import __version__

    return __version__


def _chunked(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    chunk_size: int | str | None,
    params: Any,
    batch_norm: str,
    dtype: torch.dtype | None,
) -> Any:
    """An ``(X, y)`` pair of tensors as a list of pairs of at most ``chunk_size`` samples
    (``"auto"``: see :func:`analyze`)."""
    from landscape_fast.data import is_pair

    if chunk_size is None or batch_norm != "eval" or not is_pair(data):
        return data
    X, y = data
    if not (isinstance(X, torch.Tensor) and isinstance(y, torch.Tensor)):
        return data
    if chunk_size == "auto":
        chunk_size = _auto_chunk(model, loss_fn, X, y, params, dtype)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, 'auto' or None, got {chunk_size!r}")
    if len(X) <= chunk_size:
        return data
    return [(X[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, len(X), chunk_size)]


def _auto_chunk(
    model: nn.Module,
    loss_fn: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    params: Any,
    dtype: torch.dtype | None,
    probe: int = 64,
) -> int:
    """Samples per pass whose double-backward graph fits in half the memory budget."""
    from landscape_fast.operators.memory import saved_bytes

    k = min(probe, len(X))
    H = Hessian(model, loss_fn, (X[:k], y[:k]), params, dtype=dtype)
    with H.semantics() as sem:
        _, batch, _ = next(H.batches(sem))
        theta = H.f.parameters()
        loss = H.f.loss(theta, batch)
        grads = torch.autograd.grad(loss, theta, create_graph=True, allow_unused=True)
        per_sample = saved_bytes(grads, exclude=theta) / k
    del loss, grads
    return max(16, int(H.memory_budget / 2 / max(per_sample, 1.0)))


def _resolve_quantities(quantities: Any, lr: float | None, init_params: Any) -> list[str]:
    if quantities == "default":
        out = [q for q in QUANTITIES if q not in ("stability", "pac_bayes")]
        if lr is not None:
            out.append("stability")
        if init_params is not None:
            out.append("pac_bayes")
        return [q for q in QUANTITIES if q in out]
    if isinstance(quantities, str):
        quantities = [q.strip() for q in quantities.split(",") if q.strip()]
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown or not quantities:
        raise ValueError(
            f"analyze: unknown quantities {unknown or quantities!r}; choose from "
            f"{', '.join(QUANTITIES)} or 'default'"
        )
    if "stability" in quantities and lr is None:
        raise ValueError("analyze: 'stability' needs the learning rate: pass lr=...")
    if "pac_bayes" in quantities and init_params is None:
        raise ValueError(
            "analyze: 'pac_bayes' needs the parameters at initialization: pass init_params="
        )
    return [q for q in QUANTITIES if q in quantities]


def _conditioning(
    top: EigenResult | None, bottom: EigenResult | None, top_k: int
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.linalg.spectrum import condition_numbers

    if top is None:
        raise _Skip("needs eigenvalues_top")
    lam_min = None if bottom is None else float(bottom.eigenvalues[0])
    k = len(top.eigenvalues)
    c = condition_numbers(top.eigenvalues, lambda_min=lam_min, ks=tuple(range(2, k + 1)))
    values: dict[str, Any] = {"lambda_max": c.lambda_max, "lambda_min": c.lambda_min}
    values.update({f"kappa_{j}": v for j, v in c.kappa.items()})
    values.update(negative_ratio=c.negative_ratio, raw=c.raw)
    parts = [f"κ_{j} = λ₁/λ_{j} = {v:.4g}" for j, v in c.kappa.items()]
    if c.negative_ratio is not None:
        parts.append(f"|λ_min|/λ_max = {c.negative_ratio:.4g}")
    parts.append(
        "λ_max/λ_min = " + ("n/a (not positive definite)" if c.raw is None else f"{c.raw:.4g}")
    )
    conv = bool(top.converged.all()) and (bottom is None or bool(bottom.converged.all()))
    return {
        "values": values,
        "notes": list(c.notes) + ([] if conv else ["from eigenvalues that did not all converge"]),
        "n_matvecs": 0,
        "describe": "condition numbers of the Hessian (defined for indefinite spectra): "
        + "; ".join(parts),
    }, c


def _hutch(
    op: CurvatureOperator, plan: _Planner, qname: str, rtol: float, seed: int
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.linalg.trace import frobenius_norm_sq, trace

    fn = trace if qname == "trace" else frobenius_norm_sq
    cap = plan.matvec_cap(qname, 2000, minimum=10)
    if cap < 10:
        raise _Skip(f"budget: {cap} matvecs left for it, a Hutch++ estimate needs at least 10")
    if cap < 60:  # too few for an adaptive stop (20 samples): a fixed Hutch++ run
        est = fn(op, "hutch++", num_matvecs=cap, seed=seed)
    else:
        est = fn(op, "hutch++", rtol=rtol, max_matvecs=cap, seed=seed)
    what = "tr H" if qname == "trace" else "‖H‖_F²"
    return _estimate_section(est, what), est


def _density(
    op: CurvatureOperator,
    plan: _Planner,
    top: EigenResult | None,
    probes: int,
    steps: int,
    seed: int,
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.linalg.slq import spectral_density

    cap = plan.matvec_cap("spectral_density", probes * steps, minimum=16)
    p = op.shape[0]
    steps = min(steps, cap // probes, p - 1)
    while steps < 10 and probes > 2:
        probes //= 2
        steps = min(80, cap // probes, p - 1)
    if steps < 8:
        raise _Skip(f"budget: {cap} matvecs left for it, SLQ needs at least 2 probes × 8 steps")
    refine: int | EigenResult = 0
    if top is not None and bool(top.converged.any()):  # deflated: exact point masses
        refine = top
    d = spectral_density(op, num_probes=probes, num_steps=steps, seed=seed, refine=refine)
    scale = max(float(d.scale), 1e-300)
    z = 1e-2 * scale
    grid, dens = d.density()
    rank, neg, neff = d.rank(), d.negative_mass(), d.effective_dimension(z)
    outl = d.outliers()
    return {
        "grid": _js(grid),
        "density": _js(dens),
        "outliers": _js(outl),
        "point_masses": _js(d.point_masses),
        "rank": {"value": float(rank.value), "stderr": _js(float(rank.stderr))},
        "negative_mass": {"value": float(neg.value), "stderr": _js(float(neg.stderr))},
        "effective_dimension": {
            "value": float(neff.value),
            "stderr": _js(float(neff.stderr)),
            "z": z,
        },
        "num_probes": probes,
        "num_steps": steps,
        "n_matvecs": d.n_matvecs,
        "notes": list(d.notes),
        "describe": (
            f"{d.describe()}; numerical rank {rank.value:.4g} ± {rank.stderr:.2g}, negative "
            f"mass {neg.value:.3g} ± {neg.stderr:.2g}, N_eff(z = {z:.3g}) {neff.value:.4g} ± "
            f"{neff.stderr:.2g}"
        ),
    }, d


def _outliers(top: EigenResult | None, density: Any) -> tuple[dict[str, Any], Any]:
    from landscape_fast.linalg.spectrum import count_outliers, spectral_gaps

    if top is None and density is None:
        raise _Skip("needs eigenvalues_top or spectral_density")
    out: dict[str, Any] = {"n_matvecs": 0}
    parts = []
    if top is not None and len(top.eigenvalues) > 1:
        k = count_outliers(top.eigenvalues)
        gaps = spectral_gaps(top.eigenvalues)
        out.update(count=k, gaps=_js(gaps))
        parts.append(
            f"{k} of the top {len(top.eigenvalues)} eigenvalues lie above their largest gap "
            f"({float(gaps.max()):.4g})"
        )
    if density is not None:
        slq = density.outliers()
        out["slq_outliers"] = _js(slq)
        out.setdefault("count", int(slq.numel()))
        parts.append(f"SLQ finds {int(slq.numel())} converged outlier(s) beyond the bulk edge")
    out["describe"] = "; ".join(parts) if parts else "one eigenvalue: no gaps"
    return out, out


def _sharpness(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    plan: _Planner,
    top: EigenResult | None,
    rho: float,
    seed: int,
    common: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.geometry.sharpness import RESTARTS, sharpness

    if not rho > 0:
        raise ValueError(f"analyze: rho must be > 0, got {rho}")
    restarts = len(RESTARTS) + 1  # "eigenvector" starts at +q and at -q
    # worst: (steps + 1) gradients per restart; average: 64 forwards ≈ 21 gradients; ×4 ρ
    per_rho = lambda steps: ((steps + 1) * restarts + 22) * plan.t_grad  # noqa: E731
    secs, _ = plan.allowance("sharpness", need_seconds=per_rho(5))
    steps = 20
    while steps > 5 and per_rho(steps) > secs:
        steps -= 5
    if per_rho(steps) > secs:
        raise _Skip(
            f"budget: {secs:.3g} s left for it, one worst-case ascent needs ~{per_rho(5):.3g} s"
        )
    sweep_rhos = [rho / 4, rho / 2, rho, 2 * rho]
    full_sweep = 4 * per_rho(steps) <= secs
    kw: dict[str, Any] = dict(seed=seed, top=top, **common)
    if top is None and plan.budget is not None:  # no eigensolve of its own under a budget
        kw.update(restarts=("gradient", "random"), compute_lambda_max=False)
    worst = sharpness(model, loss_fn, data, rho, "worst", steps=steps, **kw)
    average = sharpness(model, loss_fn, data, rho, "average", **kw)
    taylor = None if "restarts" in kw else sharpness(model, loss_fn, data, rho, "taylor", **kw)
    sweep = []
    for r in sweep_rhos:
        row: dict[str, Any] = {"rho": r, "taylor": None, "worst": None, "average": None}
        if r == rho:
            row.update(worst=worst.value, average=average.value, average_stderr=average.stderr)
        elif full_sweep:
            w = sharpness(model, loss_fn, data, r, "worst", steps=steps, **kw)
            a = sharpness(model, loss_fn, data, r, "average", **kw)
            row.update(worst=w.value, average=a.value, average_stderr=a.stderr)
        if worst.lambda_max is not None:
            row["taylor"] = r * worst.grad_norm + 0.5 * r * r * worst.lambda_max
        sweep.append(row)

    def part(s: Any) -> dict[str, Any]:
        return {
            "value": s.value,
            "stderr": _js(s.stderr),
            "lower_bound": bool(s.is_lower_bound),
            "describe": s.describe(),
            "notes": list(s.notes),
        }

    section = {
        "rho": rho,
        "norm": "l2",
        "worst": part(worst),
        "average": part(average),
        "taylor": None if taylor is None else {**part(taylor), "validity": taylor.validity},
        "grad_norm": worst.grad_norm,
        "lambda_max": worst.lambda_max,
        "steps": steps,
        "vs_rho": _js(sweep),
        "n_matvecs": 0,
        "describe": f"ρ = {rho:g} (L2 ball): worst {worst.value:.4g} (PGA, a lower bound), "
        f"average over δ ~ N(0, ρ²I) {average.value:.4g} ± {average.stderr:.2g}, "
        + ("no Taylor value (λ_max skipped)" if taylor is None else f"Taylor {taylor.value:.4g}")
        + ("" if full_sweep else "; the ρ sweep has only Taylor values (budget)"),
    }
    return section, {"worst": worst, "average": average, "taylor": taylor}


def _noise(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    plan: _Planner,
    lr: float | None,
    batch_size: int | None,
    seed: int,
    common: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.geometry.gradient_noise import gradient_noise

    m = plan.matvec_cap("gradient_noise", 65) - 1
    m = 0 if m < 8 else m
    kw = dict(lr=lr, batch_size=batch_size) if lr is not None and batch_size is not None else {}
    r = gradient_noise(model, loss_fn, data, curvature_samples=m, seed=seed, **kw, **common)
    se = r.b_noise_stderr if r.tr_h_sigma is not None else None
    return {
        "trace_sigma": r.trace_cov,
        "grad_norm_sq": r.grad_norm_sq,
        "b_simple": r.b_simple,
        "b_noise": _js(r.b_noise) if r.tr_h_sigma is not None else None,
        "b_noise_stderr": _js(se),
        "curvature_samples": m,
        "sde_noise_trace": r.sde_noise_trace,
        "temperature": r.temperature_isotropic,
        "per_sample": r.per_sample,
        "n_matvecs": r.n_matvecs,
        "notes": list(r.notes),
        "describe": r.describe(),
    }, r


def _stability(
    H: Hessian,
    plan: _Planner,
    lr: float | None,
    batch_size: int | None,
    top: EigenResult | None,
    bottom: EigenResult | None,
    tol: float,
    seed: int,
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.geometry.stability import stability

    if plan.budget is not None and (top is None or bottom is None):
        raise _Skip("under a budget it reuses eigenvalues_top and eigenvalues_bottom (skipped)")
    nonuniformity, note = "lower_bound", ""
    if batch_size is not None and plan.budget is not None:
        secs, _ = plan.allowance("stability")
        if secs < 4 * plan.t_hvp:  # the s² lower bound costs about 3 products of per-sample HVPs
            nonuniformity, note = "none", f" (SGD s² skipped: {secs:.3g} s left for it)"
    before = H.n_matvecs
    s = stability(
        H, lr, batch_size, top=top, bottom=bottom, tol=tol, seed=seed, nonuniformity=nonuniformity
    )
    verdict = "stable" if s.gd_stable else "unstable"
    if s.sgd_stable is not None:
        verdict += f" (GD); SGD {'stable' if s.sgd_stable else 'unstable'}"
    return {
        "lr": s.lr,
        "lambda_max": s.lambda_max,
        "lambda_min": s.lambda_min,
        "threshold": s.gd_threshold,
        "gd_margin": s.gd_margin,
        "verdict": verdict,
        "is_minimum": s.is_minimum,
        "s_squared": s.s_squared,
        "s_kind": s.s_kind,
        "sgd_lhs": s.sgd_lhs,
        "n_matvecs": H.n_matvecs - before,
        "describe": s.describe() + note,
    }, s


def _pac_bayes(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    init_params: Any,
    plan: _Planner,
    seed: int,
    common: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    from landscape_fast.geometry.pac_bayes import DEFAULT_GRID_J, pac_bayes_bound

    # mc_samples × grid forward passes over the data, one forward ≈ a third of a gradient
    per_draw = len(DEFAULT_GRID_J) * plan.t_grad / 3
    secs, _ = plan.allowance("pac_bayes", need_seconds=10 * per_draw)
    mc = int(min(100, secs / per_draw)) if per_draw > 0 else 100
    if mc < 10:
        raise _Skip(f"budget: {secs:.3g} s left for it, 10 draws per σ need ~{10 * per_draw:.3g} s")
    r = pac_bayes_bound(model, loss_fn, data, init_params, mc_samples=mc, seed=seed, **common)
    return {
        "bound": r.bound,
        "train_error": r.train_error,
        "sigma": r.sigma,
        "delta": r.delta,
        "confidence": r.confidence,
        "kl": r.kl,
        "mc_error": r.mc_error,
        "vacuous": r.vacuous,
        "n_matvecs": 0,
        "describe": r.describe(),
    }, r
