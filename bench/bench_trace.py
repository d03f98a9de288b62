"""Trace estimators side by side: products and time to a 1 % relative standard error.

For each problem and each method (Hutchinson, Hutch++, XTrace) the estimator runs
adaptively (``rtol``, default 1e-2) from several seeds and reports the median products
(matvecs) and wall time to reach the target, the relative standard error reached, and —
where the true trace is known — the error in units of the reported standard error.

Problems:

- explicit spectra (dense float64 operators, p = 1000): ``decay2`` (λ_i = 10 i⁻²),
  ``decay1`` (λ_i = 10 i⁻¹), ``flat`` (uniform in [0.5, 1.5]: no decay, Hutch++ cannot win);
- the zoo workloads, trained with ``zoo.train`` first (their spectra at a trained point
  decay fast; at initialization the MLP's is strongly indefinite, trace 14 against a
  negative mass of −63): ``digits_mlp`` (float32 Hessian; the truth is the trace of the
  dense float64 Hessian), ``resnet20`` (ResNet-20 with BatchNorm in eval mode on
  ``--resnet-samples`` synthetic CIFAR-shaped samples; no truth).

A run that reaches ``--max-matvecs`` first is reported as not converged together with the
products it *would* need, predicted from its own sample variance,
``spent + s²/τ² − n`` (residual probes still missing at the target τ). On expensive
operators ``--fixed-hutchinson N`` runs Hutchinson with N probes only and predicts its cost
to the target as ``N·(SE/τ)²`` (its SE falls like 1/√n), time scaled alike.

Run (one thread, alone on the machine)::

    OMP_NUM_THREADS=1 python bench/bench_trace.py --out bench/results/trace_cpu.md

Smoke run: ``python bench/bench_trace.py --tiny --problems decay2 --seeds 1``.
"""

from __future__ import annotations

import argparse
import math
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

PROBLEMS = ("decay2", "decay1", "flat", "digits_mlp", "resnet20")
METHODS = ("hutchinson", "hutch++", "xtrace")


def trained_workload(name: str, tiny: bool, resnet_samples: int):
    """A zoo workload trained for a few epochs (fixed seed): ``(model, loss_fn, (X, y))``."""
    from landscape_fast import zoo

    if name == "resnet20" and not tiny:
        model = zoo.resnet20(seed=0)
        X, y = zoo.cifar_like_data(n=resnet_samples, seed=0)
        loss_fn = torch.nn.functional.cross_entropy
        epochs = 10
    else:
        model, loss_fn, (X, y) = zoo.WORKLOADS[name](tiny=tiny)
        epochs = 30 if name == "digits_mlp" else 10
    zoo.train(model, X, y, loss_fn=loss_fn, max_epochs=2 if tiny else epochs)
    model.eval()
    return model, loss_fn, (X, y)


def problem(name: str, tiny: bool, resnet_samples: int) -> tuple[CurvatureOperator, float | None]:
    """The operator and its exact trace where known."""
    from landscape_fast.testing import operator_with_spectrum

    n = 200 if tiny else 1000
    i = np.arange(1, n + 1)
    spectra = {
        "decay2": 10.0 / i**2,
        "decay1": 10.0 / i,
        "flat": np.random.default_rng(0).uniform(0.5, 1.5, n),
    }
    if name in spectra:
        eigs = spectra[name]
        return operator_with_spectrum(eigs, seed=1)[0], float(eigs.sum())
    model, loss_fn, data = trained_workload(name, tiny, resnet_samples)
    print(f"{name}: trained", file=sys.stderr, flush=True)
    H = lf.Hessian(model, loss_fn, data)
    truth = None
    if name == "digits_mlp":
        X, y = data
        dense = lf.Hessian(model.double(), loss_fn, (X.double(), y)).to_dense()
        truth = float(torch.trace(dense))
        model.float()
    return H, truth


def gradient_seconds(op: CurvatureOperator) -> float | None:
    """Median time of one full-data gradient (model operators only)."""
    if not hasattr(op, "loss_and_gradient"):
        return None
    times = []
    for _ in range(3):
        start = time.perf_counter()
        op.loss_and_gradient()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def zscore(error: float, stderr: float) -> float:
    """``|error| / stderr``; an exact result (SE 0, error at rounding level) scores 0."""
    if stderr > 0:
        return abs(error) / stderr
    return 0.0 if abs(error) < 1e-9 else math.inf


def run(
    op: CurvatureOperator, method: str, rtol: float, seed: int, max_matvecs: int, fixed: int = 0
) -> dict:
    """One adaptive run (or, with ``fixed``, a fixed-budget run whose cost to the target is
    predicted from its standard error: SE ∝ 1/√n, so n·(SE/τ)² products)."""
    start = time.perf_counter()
    if fixed:
        est = lf.trace(op, method, num_matvecs=fixed, seed=seed)
        seconds = time.perf_counter() - start
        tau = rtol * abs(float(est.value))
        predicted = int(fixed * (float(est.stderr) / tau) ** 2)
        return {"est": est, "seconds": seconds * predicted / fixed, "predicted": predicted,
                "converged": False}  # fmt: skip
    est = lf.trace(op, method, rtol=rtol, seed=seed, max_matvecs=max_matvecs)
    seconds = time.perf_counter() - start
    predicted = est.n_matvecs
    if not est.converged and est.samples is not None and est.samples.numel() > 1:
        tau = rtol * abs(float(est.value))
        var = float(est.samples.var(correction=1))
        n = est.samples.numel()
        if method == "xtrace":  # SE ∝ 1/√(test vectors): products scale like SE ratio²
            predicted = int(est.n_matvecs * (float(est.stderr) / tau) ** 2)
        else:
            predicted = int(est.n_matvecs + max(0.0, var / tau**2 - n))
    return {"est": est, "seconds": seconds, "predicted": predicted, "converged": est.converged}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--rtol", type=float, default=1e-2)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per case (medians)")
    ap.add_argument("--max-matvecs", type=int, default=4000)
    ap.add_argument("--resnet-samples", type=int, default=128)
    ap.add_argument(
        "--fixed-hutchinson", type=int, default=0,
        help="run Hutchinson with this fixed budget and predict its cost to the target",
    )  # fmt: skip
    ap.add_argument("--tiny", action="store_true", help="small problems (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    lines = [
        f"Trace estimators, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), target relative SE {args.rtol:g}, "
        f"median of {args.seeds} seed(s). Command: `python bench/bench_trace.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
        "| problem | p | method | matvecs | seconds | × gradient | rel. SE | |err|/SE "
        "| converged | matvecs vs Hutchinson |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.problems:
        op, truth = problem(name, args.tiny, args.resnet_samples)
        grad = gradient_seconds(op)
        base = None
        for method in args.methods:
            fixed = args.fixed_hutchinson if method == "hutchinson" else 0
            runs = [
                run(op, method, args.rtol, s, args.max_matvecs, fixed) for s in range(args.seeds)
            ]
            conv = all(r["converged"] for r in runs)
            mv = statistics.median(r["predicted"] for r in runs)
            secs = statistics.median(r["seconds"] for r in runs)
            rse = statistics.median(r["est"].relative_stderr for r in runs)
            zs = ""
            if truth is not None:
                z = [zscore(float(r["est"].value) - truth, float(r["est"].stderr)) for r in runs]
                zs = f"{statistics.median(z):.2f}"
            if method == "hutchinson":
                base = mv
            ratio = "" if base is None or method == "hutchinson" else f"{mv / base:.2f}×"
            if conv:
                mv_s, secs_s = f"{mv:.0f}", f"{secs:.2f}"
            elif fixed:
                mv_s, secs_s = f"predicted {mv:.0f} (from {fixed})", f"≈ {secs:.0f}"
            else:
                mv_s, secs_s = f"> {args.max_matvecs} (predicted {mv:.0f})", f"> {secs:.1f}"
            gx = "" if grad is None or not conv else f"{secs / grad:.0f}"
            row = (
                f"| {name} | {op.shape[0]:,} | {method} | {mv_s} | {secs_s} | {gx} | "
                f"{rse:.4f} | {zs} | {conv} | {ratio} |"
            )
            lines.append(row)
            print(row, file=sys.stderr, flush=True)
        if truth is not None and not math.isnan(truth):
            lines.append(f"| {name} | | exact trace {truth:.6g} | | | | | | | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
