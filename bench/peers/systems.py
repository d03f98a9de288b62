"""One adapter per system: landscape_fast and its peers, driven the way their users drive them.

Each adapter runs a *quantity* (``top1``, ``top5``, ``top20``, ``bottom1``, ``trace``,
``density``) on a :class:`~bench.peers.workloads.Workload` under a *setting* (a dict of the
peer's own keyword arguments) and returns a :class:`Raw` answer with the number of
Hessian-vector products it spent (counted by wrapping the peer's HVP). Settings come from

- :meth:`System.default`: the peer's defaults, what its users get;
- :meth:`System.start` and :meth:`System.refine`: a ladder of ever tighter settings
  (tolerance, iteration count, sample count) that the harness climbs until the accuracy
  target against the float64 reference is met or the ladder ends ("gave up").

Systems: ``ours`` (``lf.eigsh`` / ``lf.trace`` / ``lf.spectral_density``), ``pyhessian``
(0.1; ``density`` with a ``torch.linalg.eigh`` stand-in for the removed ``torch.eig``),
``pyhessian_unpatched`` (the same ``density`` without the stand-in, to record the crash),
``eigenthings`` (hessian-eigenthings 1.x), ``curvlinops`` (``to_scipy()`` + scipy
``eigsh``, its trace estimators and Papyan's Lanczos spectrum) and ``scipy_arpack`` (scipy
``eigsh`` around our ``lf.Hessian`` products: only the eigensolver differs from ``ours``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import landscape_fast as lf

from .workloads import Workload

QUANTITIES = ("top1", "top5", "top20", "bottom1", "trace", "density")
EIG_K = {"top1": 1, "top5": 5, "top20": 20, "bottom1": 1}
TRACE_RTOL = 0.01  # target relative standard error of the trace
DENSITY_PROBES, DENSITY_STEPS = 8, 80
TOL_LADDER = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)

Setting = dict[str, Any]


@dataclass
class Raw:
    """A system's answer: eigenvalues (in the quantity's order), a trace, or a measure."""

    values: np.ndarray | None = None
    trace: float | None = None
    stderr: float | None = None
    nodes: np.ndarray | None = None  # density: support of the spectral measure
    weights: np.ndarray | None = None  # density: its masses (sum 1)
    matvecs: int | None = None
    note: str = ""


class Unsupported(Exception):
    """The system has no way to compute the quantity."""


def _which(q: str) -> str:
    return "SA" if q == "bottom1" else "LA"


def _order(values: Any, q: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return np.sort(v) if _which(q) == "SA" else np.sort(v)[::-1]


def _needed(n: int, stderr: float, value: float, factor: float = 1.15) -> int:
    """Samples an i.i.d. estimator needs for a relative SE of ``TRACE_RTOL`` (SE ∝ 1/√n)."""
    target = TRACE_RTOL * abs(value)
    if not math.isfinite(stderr) or target == 0:
        return 2 * n
    return max(n + 1, math.ceil(factor * n * (stderr / target) ** 2))


def _trace_refine(
    key: str, setting: Setting, raw: Raw, cap: int, multiple: int = 1, growth: float = math.inf
) -> Setting | str:
    """Next sample count from the SE (at most ``growth`` times the last: Hutch++'s SE falls
    faster than 1/√n once its sketch catches the top of the spectrum)."""
    n = int(setting[key])
    if raw.stderr is None or raw.trace is None:
        return "no standard error to steer by"
    need = _needed(n, raw.stderr, raw.trace)
    if math.isfinite(growth):
        need = min(need, math.ceil(growth * n))
    need = multiple * math.ceil(need / multiple)
    if need > cap:
        return f"needs ≈{need} products (cap {cap})"
    return {**setting, key: need}


class System:
    """Base adapter. Subclasses set ``name``, ``dist`` and ``quantities``."""

    name = "?"
    dist: str | None = None  # distribution whose version is reported
    module: str | None = None  # module that must import
    quantities: tuple[str, ...] = ()
    unsupported: dict[str, str] = {}

    def __init__(self, max_matvecs: int = 20000) -> None:
        self.max_matvecs = max_matvecs

    def import_error(self) -> str | None:
        """``None`` when the peer imports, else the error string."""
        if self.module is None:
            return None
        try:
            importlib.import_module(self.module)
        except Exception as err:  # noqa: BLE001 - any failure is reported in the table
            return f"{type(err).__name__}: {err}"
        return None

    def version(self) -> str:
        if self.dist is None:
            return ""
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def supports(self, q: str) -> bool:
        return q in self.quantities

    def default(self, q: str, w: Workload) -> Setting:
        raise NotImplementedError

    def start(self, q: str, w: Workload) -> Setting:
        raise NotImplementedError

    def refine(self, q: str, w: Workload, setting: Setting, raw: Raw) -> Setting | str:
        """The next, tighter setting; a string says why the ladder ends (gave up)."""
        raise NotImplementedError

    def shrink(self, q: str, w: Workload, setting: Setting, raw: Raw) -> list[Setting]:
        """Cheaper settings to try, in order, after ``setting`` met the target: a ladder's
        rungs are a decade apart (and a fixed budget's first rung may overshoot), so the
        first rung that meets may spend more than the system needs. The search keeps one
        that still meets the target with fewer products, and asks again from there."""
        return []

    def run(self, q: str, w: Workload, setting: Setting) -> Raw:
        raise NotImplementedError


def _half_decade(setting: Setting, key: str = "tol") -> list[Setting]:
    """The tolerance half a decade looser (√10 ×), if it sits on the ladder's decades."""
    tol = setting.get(key)
    if not isinstance(tol, float) or not 0 < tol < 1 or abs(math.log10(tol) % 1) > 1e-9:
        return []
    return [{**setting, key: tol * math.sqrt(10)}]


def _trace_shrink(key: str, setting: Setting, raw: Raw, multiple: int = 1) -> Setting | None:
    """The sample count the SE predicts for the target (×1.15), at least half the current
    one (Hutch++'s SE does not grow like 1/√n as it shrinks), rounded up to ``multiple``."""
    n = int(setting[key])
    if raw.stderr is None or raw.trace is None or not math.isfinite(raw.stderr):
        return None
    target = TRACE_RTOL * abs(raw.trace)
    predicted = math.ceil(1.15 * n * (raw.stderr / target) ** 2) if target > 0 else n
    need = multiple * math.ceil(max(predicted, math.ceil(n / 2), multiple) / multiple)
    return {**setting, key: need} if need < n else None


def _scipy_shrink(q: str, w: Workload, setting: Setting) -> list[Setting]:
    """scipy ``eigsh``: the half-decade looser ``tol``, and half the Lanczos basis (``ncv``,
    down to ``k + 2``): its default ``max(2k + 1, 20)`` makes even a top-1 run take 20
    products before its first convergence check."""
    if q not in EIG_K:
        return []
    k = EIG_K[q]
    ncv = int(setting.get("ncv", min(w.p, max(2 * k + 1, 20))))
    smaller = max(k + 2, ncv // 2)
    return _half_decade(setting) + ([{**setting, "ncv": smaller}] if smaller < ncv else [])


def _ladder_next(ladder: list[Setting], setting: Setting) -> Setting | str:
    try:
        i = ladder.index(setting)
    except ValueError:
        return ladder[0]
    if i + 1 < len(ladder):
        return ladder[i + 1]
    return f"tightest setting {setting} reached"


# ---------------------------------------------------------------------------------------------
# landscape_fast
# ---------------------------------------------------------------------------------------------


class Ours(System):
    """``landscape_fast``: block Lanczos ``eigsh``, adaptive Hutch++, block SLQ."""

    name = "ours"
    dist = "landscape_fast"
    quantities = QUANTITIES

    def _op(self, w: Workload) -> lf.Hessian:
        return lf.Hessian(w.model, w.loss_fn, w.data, batch_norm="eval")

    def default(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return {"tol": 1e-6}
        if q == "trace":
            return {"method": "hutch++", "rtol": TRACE_RTOL}
        return {"num_probes": DENSITY_PROBES, "num_steps": DENSITY_STEPS}

    def _ladder(self) -> list[Setting]:
        return [{"tol": t} for t in TOL_LADDER]

    def start(self, q: str, w: Workload) -> Setting:
        return self._ladder()[0] if q in EIG_K else self.default(q, w)

    def refine(self, q: str, w: Workload, setting: Setting, raw: Raw) -> Setting | str:
        if q in EIG_K:
            return _ladder_next(self._ladder(), setting)
        if q == "trace":
            return "adaptive estimator stopped before its target (budget)"
        return "fixed budget (8 probes × 80 steps)"

    def shrink(self, q: str, w: Workload, setting: Setting, raw: Raw) -> list[Setting]:
        return _half_decade(setting) if q in EIG_K else []

    def run(self, q: str, w: Workload, setting: Setting) -> Raw:
        H = self._op(w)
        if q in EIG_K:
            r = lf.eigsh(H, k=EIG_K[q], which=_which(q), seed=0, **setting)
            note = "" if bool(r.converged.all()) else "not converged"
            return Raw(values=_order(r.eigenvalues, q), matvecs=H.n_matvecs, note=note)
        if q == "trace":
            t = lf.trace(H, seed=0, max_matvecs=self.max_matvecs, **setting)
            return Raw(trace=float(t.value), stderr=float(t.stderr), matvecs=H.n_matvecs)
        d = lf.spectral_density(H, seed=0, **setting)
        mask = d.mask
        nodes = d.nodes[mask].numpy()
        mass = (d.scaled_weights[mask] / d.num_probes).numpy()
        pm = d.point_masses.numpy()
        return Raw(
            nodes=np.concatenate([nodes, pm]),
            weights=np.concatenate([mass, np.full(pm.size, 1.0 / d.p)]),
            matvecs=H.n_matvecs,
        )


# ---------------------------------------------------------------------------------------------
# PyHessian 0.1
# ---------------------------------------------------------------------------------------------


def _eig_standin(A: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.eig`` (removed in torch 2.0) for a symmetric matrix, via ``torch.linalg.eigh``:
    eigenvalues as ``(n, 2)`` (real, imaginary = 0) and the eigenvectors as columns."""
    w, V = torch.linalg.eigh(A)
    return torch.stack([w, torch.zeros_like(w)], dim=1), V if eigenvectors else A.new_empty(0)


@contextlib.contextmanager
def torch_eig_patched() -> Iterator[None]:
    """Temporarily replace ``torch.eig`` (in torch ≥ 2.0 a stub that raises) by the stand-in."""
    missing = object()
    orig = getattr(torch, "eig", missing)
    torch.eig = _eig_standin  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if orig is missing:
            del torch.eig  # type: ignore[attr-defined]
        else:
            torch.eig = orig  # type: ignore[attr-defined]


class PyHessian(System):
    """PyHessian 0.1 (``pyhessian.hessian``), full batch via ``data=(X, y)``, ``cuda=False``.

    Top-k: power iteration with deflation, ``eigenvalues(maxIter=100, tol=1e-3, top_n=k)``;
    trace: Hutchinson ``trace(maxIter=100, tol=1e-3)`` (its samples give the SE); density:
    SLQ ``density(iter=100, n_v=1)``. Its RNG is the global one: seeded with 0 per run.
    """

    name = "pyhessian"
    dist = "pyhessian"
    module = "pyhessian"
    quantities = ("top1", "top5", "top20", "trace", "density")
    unsupported = {"bottom1": "power iteration finds the largest-magnitude eigenvalues only"}
    patched = True

    def default(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return {"maxIter": 100, "tol": 1e-3}
        if q == "trace":
            return {"maxIter": 100, "tol": 1e-3}
        return {"iter": 100, "n_v": 1}

    def _ladder(self) -> list[Setting]:
        return [
            {"maxIter": it, "tol": tol}
            for tol, it in ((1e-4, 300), (1e-5, 1000), (1e-6, 3000), (1e-7, 10000), (0.0, 20000))
        ]

    def start(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return self._ladder()[0]
        if q == "trace":  # tol=-inf: never stop early, i.e. exactly maxIter probes
            return {"maxIter": 100, "tol": -math.inf}
        return {"iter": DENSITY_STEPS, "n_v": DENSITY_PROBES}

    def refine(self, q: str, w: Workload, setting: Setting, raw: Raw) -> Setting | str:
        if q in EIG_K:
            nxt = _ladder_next(self._ladder(), setting)
            if isinstance(nxt, dict) and nxt["maxIter"] * EIG_K[q] > self.max_matvecs:
                return f"next rung {nxt} exceeds {self.max_matvecs} products"
            return nxt
        if q == "trace":
            return _trace_refine("maxIter", setting, raw, min(self.max_matvecs, 10 * w.p))
        return "fixed budget (8 probes × 80 steps)"

    def shrink(self, q: str, w: Workload, setting: Setting, raw: Raw) -> list[Setting]:
        if q == "trace":
            smaller = _trace_shrink("maxIter", setting, raw)
            return [smaller] if smaller else []
        return _half_decade(setting) if q in EIG_K else []

    def run(self, q: str, w: Workload, setting: Setting) -> Raw:
        ph = importlib.import_module("pyhessian.hessian")  # the module, not the class

        count = [0]
        orig = ph.hessian_vector_product

        def counted(gradsH: Any, params: Any, v: Any) -> Any:
            count[0] += 1
            return orig(gradsH, params, v)

        ph.hessian_vector_product = counted
        torch.manual_seed(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                h = ph.hessian(w.model, w.criterion, data=w.data, cuda=False)
                if q in EIG_K:
                    vals, _ = h.eigenvalues(top_n=EIG_K[q], **setting)
                    return Raw(values=_order(vals, q), matvecs=count[0])
                if q == "trace":
                    s = np.asarray(h.trace(**setting), dtype=np.float64)
                    se = float(s.std(ddof=1) / math.sqrt(s.size)) if s.size > 1 else math.nan
                    return Raw(trace=float(s.mean()), stderr=se, matvecs=count[0])
                ctx = torch_eig_patched() if self.patched else contextlib.nullcontext()
                with ctx:
                    ev, wt = h.density(**setting)
                nodes = np.concatenate([np.real(np.asarray(e, dtype=complex)) for e in ev])
                mass = np.concatenate([np.asarray(x, dtype=np.float64) for x in wt]) / len(ev)
                return Raw(nodes=nodes, weights=mass, matvecs=count[0])
        finally:
            ph.hessian_vector_product = orig
            w.clear_grads()


class PyHessianUnpatched(PyHessian):
    """PyHessian's ``density`` as shipped: calls ``torch.eig``, removed in torch 2.0."""

    name = "pyhessian_unpatched"
    quantities = ("density",)
    unsupported = {
        q: "identical to pyhessian (no torch.eig call); only density is run unpatched"
        for q in QUANTITIES
        if q != "density"
    }
    patched = False


# ---------------------------------------------------------------------------------------------
# hessian-eigenthings 1.x
# ---------------------------------------------------------------------------------------------


class Eigenthings(System):
    """hessian-eigenthings 1.x: ``HessianOperator`` (autograd HVP, full data), ``lanczos``
    (``max_iter=2k``, ``tol=1e-4``, reorthogonalised when ≤ 50 steps), ``trace`` (Hutch++,
    100 products, with its SE) and ``spectral_density`` (10 runs × 80 steps)."""

    name = "eigenthings"
    dist = "hessian-eigenthings"
    module = "hessian_eigenthings"
    quantities = QUANTITIES

    def default(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return {}
        if q == "trace":
            return {"num_matvecs": 100}
        return {}

    def start(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return {"max_iter": min(2 * EIG_K[q], w.p - 1), "reorthogonalize": True}
        if q == "trace":
            return {"num_matvecs": 99}
        return {"num_runs": DENSITY_PROBES, "lanczos_steps": DENSITY_STEPS}

    def refine(self, q: str, w: Workload, setting: Setting, raw: Raw) -> Setting | str:
        if q in EIG_K:
            m = setting["max_iter"]
            cap = min(w.p - 1, 1200)
            if m >= cap:
                return f"max_iter={m} reached the cap {cap} (no restarts)"
            return {**setting, "max_iter": min(2 * m if m >= 10 else 10, cap)}
        if q == "trace":
            cap = min(self.max_matvecs, w.p)
            return _trace_refine("num_matvecs", setting, raw, cap, multiple=3, growth=2.0)
        return "fixed budget (8 probes × 80 steps)"

    def shrink(self, q: str, w: Workload, setting: Setting, raw: Raw) -> list[Setting]:
        if q == "trace":
            smaller = _trace_shrink("num_matvecs", setting, raw, multiple=3)
            return [smaller] if smaller else []
        if q in EIG_K:  # a quarter fewer Lanczos steps (no restarts: steps are products)
            m = int(setting["max_iter"])
            fewer = max(EIG_K[q] + 1, math.ceil(0.75 * m))
            return [{**setting, "max_iter": fewer}] if fewer < m else []
        return []

    def run(self, q: str, w: Workload, setting: Setting) -> Raw:
        import hessian_eigenthings as he

        op = he.HessianOperator(w.model, [w.data], he.supervised_loss(w.criterion))
        count = [0]

        def mv(v: torch.Tensor) -> torch.Tensor:
            count[0] += 1
            return op.matvec(v)

        cop = he.LambdaOperator(mv, op.size, device=op.device, dtype=op.dtype)
        if q in EIG_K:
            r = he.lanczos(cop, k=EIG_K[q], which=_which(q), seed=0, **setting)
            note = "" if bool(r.converged.all()) else "not converged (own flag)"
            return Raw(values=_order(r.eigenvalues, q), matvecs=count[0], note=note)
        if q == "trace":
            t = he.trace(cop, seed=0, **setting)
            return Raw(trace=float(t.estimate), stderr=float(t.stderr), matvecs=count[0])
        d = he.spectral_density(cop, seed=0, **setting)
        nodes, wt = d.raw_eigenvalues.double().numpy(), d.raw_weights.double().numpy()
        ok = np.isfinite(nodes)
        return Raw(nodes=nodes[ok], weights=wt[ok] / nodes.shape[0], matvecs=count[0])


# ---------------------------------------------------------------------------------------------
# curvlinops 3.x
# ---------------------------------------------------------------------------------------------


def _scipy_ladder() -> list[Setting]:
    return [{"tol": t} for t in TOL_LADDER] + [{"tol": 0.0}]


class Curvlinops(System):
    """curvlinops-for-pytorch 3.x: ``HessianLinearOperator`` (vmapped forward-over-reverse,
    ``check_deterministic=True``), eigenvalues via ``.to_scipy()`` + scipy ``eigsh`` (default
    ``tol=0``), trace via ``hutchpp_trace(A, 100)`` (no default budget; no SE), density via
    ``lanczos_approximate_spectrum(A, ncv=80)`` (no reorthogonalisation, boundaries from
    ``eigsh(tol=1e-2)``)."""

    name = "curvlinops"
    dist = "curvlinops-for-pytorch"
    module = "curvlinops"
    quantities = QUANTITIES

    def _op(self, w: Workload) -> tuple[Any, list[int]]:
        from curvlinops import HessianLinearOperator

        A = HessianLinearOperator(w.model, w.criterion, w.params, [w.data])
        count = [0]
        orig = A._matmat

        def counted(M: list[torch.Tensor]) -> list[torch.Tensor]:
            count[0] += int(M[0].shape[-1])
            return orig(M)

        A._matmat = counted
        return A, count

    def default(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return {"tol": 0.0}
        if q == "trace":
            # no default budget; 99 (divisible by 3, as it requires) like the other peers' 100
            return {"method": "hutchpp_trace", "num_matvecs": 99}
        return {"ncv": DENSITY_STEPS, "num_repeats": 1}

    def start(self, q: str, w: Workload) -> Setting:
        if q in EIG_K:
            return _scipy_ladder()[0]
        if q == "trace":
            return {"method": "hutchinson (samples through A @ V, 32 per block)"}
        return {"ncv": DENSITY_STEPS, "num_repeats": DENSITY_PROBES}

    def refine(self, q: str, w: Workload, setting: Setting, raw: Raw) -> Setting | str:
        if q in EIG_K:
            return _ladder_next(_scipy_ladder(), setting)
        if q == "trace":
            return raw.note or "adaptive Hutchinson stopped before its target"
        return "fixed budget (8 probes × 80 steps)"

    def shrink(self, q: str, w: Workload, setting: Setting, raw: Raw) -> list[Setting]:
        return _scipy_shrink(q, w, setting)

    def run(self, q: str, w: Workload, setting: Setting) -> Raw:
        import curvlinops
        import scipy.sparse.linalg as sla

        A, count = self._op(w)
        torch.manual_seed(0)
        if q in EIG_K:
            v0 = np.random.default_rng(0).standard_normal(w.p)
            vals = sla.eigsh(A.to_scipy(), k=EIG_K[q], which=_which(q), v0=v0, **setting)[0]
            return Raw(values=_order(vals, q), matvecs=count[0])
        if q == "trace":
            if setting.get("method") == "hutchpp_trace":
                val = curvlinops.hutchpp_trace(A, num_matvecs=setting["num_matvecs"])
                return Raw(trace=float(val), matvecs=count[0], note="no SE returned")
            return self._hutchinson(A, w, count)
        import curvlinops.papyan2020traces.spectrum as sp

        runs: list[tuple[torch.Tensor, torch.Tensor]] = []
        orig = sp.fast_lanczos

        def recorded(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            out = orig(*args, **kwargs)
            runs.append(out)
            return out

        sp.fast_lanczos = recorded
        try:
            sp.lanczos_approximate_spectrum(A, **setting)
        finally:
            sp.fast_lanczos = orig
        nodes = np.concatenate([e.double().numpy() for e, _ in runs])
        mass = np.concatenate([(V[0] ** 2).double().numpy() for _, V in runs]) / len(runs)
        return Raw(nodes=nodes, weights=mass, matvecs=count[0])

    def _hutchinson(self, A: Any, w: Workload, count: list[int], block: int = 32) -> Raw:
        """Hutchinson with Rademacher probes through curvlinops' batched product, stopping at
        a relative SE ≤ 1 % (at least 20 samples) or at the product cap."""
        gen = torch.Generator().manual_seed(0)
        cap = min(self.max_matvecs, 10 * w.p)
        samples: list[torch.Tensor] = []
        n = 0
        while True:
            V = torch.randint(0, 2, (w.p, block), generator=gen).float().mul_(2).sub_(1)
            AV = A @ V
            samples.append((V * AV).sum(0).double())
            n += block
            s = torch.cat(samples)
            mean, se = float(s.mean()), float(s.std() / math.sqrt(n))
            if n >= 20 and se <= TRACE_RTOL * abs(mean):
                return Raw(trace=mean, stderr=se, matvecs=count[0])
            if n >= cap:
                need = _needed(n, se, mean)
                return Raw(
                    trace=mean, stderr=se, matvecs=count[0], note=f"needs ≈{need} (cap {cap})"
                )


# ---------------------------------------------------------------------------------------------
# scipy ARPACK around our products
# ---------------------------------------------------------------------------------------------


class ScipyArpack(System):
    """scipy ``eigsh`` (ARPACK, float64 Lanczos with implicit restarts; default ``tol=0``)
    on a ``LinearOperator`` whose products are ``lf.Hessian.matmat``: the same HVP as ours."""

    name = "scipy_arpack"
    dist = "scipy"
    module = "scipy.sparse.linalg"
    quantities = ("top1", "top5", "top20", "bottom1")
    unsupported = {
        "trace": "an eigensolver only",
        "density": "an eigensolver only",
    }

    def default(self, q: str, w: Workload) -> Setting:
        return {"tol": 0.0}

    def start(self, q: str, w: Workload) -> Setting:
        return _scipy_ladder()[0]

    def refine(self, q: str, w: Workload, setting: Setting, raw: Raw) -> Setting | str:
        return _ladder_next(_scipy_ladder(), setting)

    def shrink(self, q: str, w: Workload, setting: Setting, raw: Raw) -> list[Setting]:
        return _scipy_shrink(q, w, setting)

    def run(self, q: str, w: Workload, setting: Setting) -> Raw:
        import scipy.sparse.linalg as sla

        H = lf.Hessian(w.model, w.loss_fn, w.data, batch_norm="eval")
        p = w.p

        def mv(x: np.ndarray) -> np.ndarray:
            x2 = torch.as_tensor(np.ascontiguousarray(x.reshape(p, -1).T), dtype=torch.float32)
            return H.matmat(x2).double().numpy().T.reshape(x.shape)

        L = sla.LinearOperator((p, p), matvec=mv, matmat=mv, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(p)
        vals = sla.eigsh(L, k=EIG_K[q], which=_which(q), v0=v0, **setting)[0]
        return Raw(values=_order(vals, q), matvecs=H.n_matvecs)


SYSTEMS: dict[str, Callable[..., System]] = {
    cls.name: cls
    for cls in (Ours, PyHessian, PyHessianUnpatched, Eigenthings, Curvlinops, ScipyArpack)
}
