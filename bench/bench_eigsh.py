"""Eigensolvers side by side: lf.eigsh vs scipy eigsh (ARPACK) vs power iteration.

For each problem (explicit operators with known spectra, and the Hessians of the zoo
workloads) and each query (top-1, top-5, top-20, bottom-5, both ends 4) at tolerance
1e-4 and 1e-8, every solver runs on the same operator and reports: products (matvecs),
wall time, the fraction of time spent *outside* the operator (orthogonalization, small
dense problems, bookkeeping), and the accuracy reached — the largest relative eigenvalue
error against a reference, ``max |λ − λ_ref| / max |λ_ref|``:

- explicit spectra: the known eigenvalues;
- digits MLP: ``numpy.linalg.eigh`` of the dense float64 Hessian;
- transformer / ResNet-20: ``lf.eigsh`` at tol 1e-7 with validation (float32 operator).

scipy's ARPACK wraps the same operator through a ``LinearOperator`` (float64 numpy in and
out); its ``tol`` is relative to each Ritz value (ours: to the spectral scale). Power
iteration is PyHessian's algorithm (deflation, relative-change rule at the tolerance,
at most 1000 products per eigenpair; largest *magnitude* only, so only top-k rows).

Run (one thread)::

    OMP_NUM_THREADS=1 python bench/bench_eigsh.py --out bench/results/eigsh_cpu.md

Smoke run: ``python bench/bench_eigsh.py --problems separated --queries top1 --tols 1e-4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import landscape_fast as lf  # noqa: E402
from landscape_fast.operators.base import CurvatureOperator  # noqa: E402

QUERIES = {"top1": (1, "LA"), "top5": (5, "LA"), "top20": (20, "LA"), "bottom5": (5, "SA"),
           "both4": (4, "BE")}  # fmt: skip
PROBLEMS = ("separated", "decay", "householder_200k", "digits_mlp", "transformer", "resnet20")
SOLVERS = ("eigsh", "arpack", "power")


class Timed(CurvatureOperator):
    """Wraps an operator and accumulates the time spent inside its products."""

    def __init__(self, op: CurvatureOperator) -> None:
        super().__init__(op.shape[0], op.dtype, op.device)
        self.op = op
        self.preferred_block_size = op.preferred_block_size
        self.seconds = 0.0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.op.matmat(V)
        self.seconds += time.perf_counter() - start
        return out


def problem(name: str, tiny: bool = False) -> tuple[CurvatureOperator, np.ndarray | None]:
    """The operator and, where known, its full spectrum (else ``None``)."""
    from landscape_fast.testing import HouseholderSpectrumOperator, operator_with_spectrum

    rng = np.random.default_rng(0)
    n = 200 if tiny else 1000
    if name == "separated":
        eigs = np.concatenate([np.linspace(5, 20, 10), rng.uniform(-0.5, 1, n - 10)])
        return operator_with_spectrum(eigs, seed=1)[0], eigs
    if name == "decay":
        eigs = 10.0 * 0.97 ** np.arange(n) * np.where(np.arange(n) % 7 == 3, -1, 1)
        return operator_with_spectrum(eigs, seed=2)[0], eigs
    if name == "householder_200k":
        m = 20_000 if tiny else 200_000
        eigs = np.concatenate([[50.0, 45, 40, 35, 30], rng.uniform(-3, 10, m - 5)])
        return HouseholderSpectrumOperator(torch.tensor(eigs), seed=3, dtype=torch.float32), eigs
    from landscape_fast import zoo

    model, loss_fn, (X, y) = zoo.WORKLOADS[name](tiny=tiny)
    model.eval()
    if name == "digits_mlp":
        model = model.double()
        X = X.double()
    return lf.Hessian(model, loss_fn, (X, y)), None


def reference(name: str, op: CurvatureOperator, eigs: np.ndarray | None, k: int, which: str):
    if eigs is None and name == "digits_mlp":
        eigs = np.linalg.eigvalsh(op.to_dense().double().numpy())
    if eigs is not None:
        s = np.sort(eigs)
        if which == "LA":
            return s[::-1][:k]
        if which == "SA":
            return s[:k]
        return np.concatenate([s[::-1][: k - k // 2], s[: k // 2]])
    r = lf.eigsh(op, k=k, which=which, tol=1e-7, validate=True)
    return r.eigenvalues.numpy()


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    if len(got) != len(ref):
        return float("nan")
    return float(np.max(np.abs(np.sort(got) - np.sort(ref))) / np.max(np.abs(ref)))


def run_solver(solver: str, op: CurvatureOperator, k: int, which: str, tol: float) -> dict:
    timed = Timed(op)
    start = time.perf_counter()
    if solver == "eigsh":
        r = lf.eigsh(timed, k=k, which=which, tol=tol, seed=0)
        vals, conv = r.eigenvalues.numpy(), bool(r.converged.all())
    elif solver == "power":
        r = lf.power_iteration(timed, k=k, tol=tol, max_iter=1000, residual_tol=tol)
        vals, conv = r.eigenvalues.numpy(), bool(r.converged.all())
    else:
        import scipy.sparse.linalg as sla

        def mv(x: np.ndarray) -> np.ndarray:
            x2 = x.reshape(op.shape[0], -1).T
            out = timed.matmat(torch.as_tensor(np.ascontiguousarray(x2)).to(op.dtype))
            return out.double().numpy().T.reshape(x.shape)

        L = sla.LinearOperator(op.shape, matvec=mv, matmat=mv, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(op.shape[0])
        try:
            vals = sla.eigsh(L, k=k, which=which, tol=tol, v0=v0, maxiter=10_000)[0]
            conv = True
        except sla.ArpackNoConvergence as err:
            vals, conv = err.eigenvalues, False
    total = time.perf_counter() - start
    return {
        "matvecs": timed.n_matvecs,
        "seconds": total,
        "outside": (total - timed.seconds) / total if total > 0 else 0.0,
        "values": np.asarray(vals, dtype=np.float64),
        "converged": conv,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    ap.add_argument("--queries", nargs="+", default=list(QUERIES), choices=list(QUERIES))
    ap.add_argument("--tols", nargs="+", type=float, default=[1e-4, 1e-8])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per case (median)")
    ap.add_argument("--tiny", action="store_true", help="small problems (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    lines = [
        f"eigsh benchmark, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s). Command: `python bench/bench_eigsh.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
        "| problem | p | query | tol | solver | matvecs | seconds | outside op | rel. error "
        "| converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.problems:
        op, eigs = problem(name, args.tiny)
        for q in args.queries:
            k, which = QUERIES[q]
            ref = reference(name, op, eigs, k, which)
            for tol in args.tols:
                for solver in args.solvers:
                    if solver == "power" and which != "LA":
                        continue
                    runs = [run_solver(solver, op, k, which, tol) for _ in range(args.repeats)]
                    r = runs[-1]
                    secs = statistics.median(x["seconds"] for x in runs)
                    row = (
                        f"| {name} | {op.shape[0]:,} | {q} | {tol:.0e} | {solver} | "
                        f"{r['matvecs']} | {secs:.3f} | {100 * r['outside']:.1f} % | "
                        f"{rel_error(r['values'], ref):.1e} | {r['converged']} |"
                    )
                    lines.append(row)
                    print(row, file=sys.stderr, flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
