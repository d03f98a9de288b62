"""Worst-case sharpness against one full-data gradient, side by side.

On the trained digits MLP (full data, float32) this times one full-data loss and gradient
(``Hessian.loss_and_gradient``) and ``lf.sharpness(kind="worst", steps=20)``

- with one restart (the first-order maximiser) and no λ_max: the issue's target case,
  "20 ascent steps cost ≤ 25 gradient evaluations";
- with the default restarts (gradient, ±top eigenvector, random: 4 × 20 steps) and λ_max.

Each is the median of ``--repeats`` runs after a warm-up; the table gives seconds, the ratio
to one gradient and the gradient passes the ascent counted.

Run (one thread, alone on the machine)::

    OMP_NUM_THREADS=1 python bench/bench_sharpness.py --out bench/results/sharpness_cpu.md

Smoke run: ``python bench/bench_sharpness.py --tiny --repeats 1``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import landscape_fast as lf  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up, and its result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    from landscape_fast import zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rho", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="small problem (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    model, loss_fn, (X, y) = zoo.WORKLOADS["digits_mlp"](tiny=args.tiny)
    zoo.train(model, X, y, loss_fn=loss_fn, max_epochs=2 if args.tiny else 30)
    model.eval()
    H = lf.Hessian(model, loss_fn, (X, y))
    grad_s, _ = timed(H.loss_and_gradient, args.repeats)
    cases = {
        "worst, 1 restart, 20 steps, no λmax": dict(
            restarts=("gradient",), compute_lambda_max=False
        ),
        "worst, default 4 restarts × 20 steps + λmax": {},
    }
    lines = [
        f"Sharpness cost, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), digits MLP (p = {H.shape[0]:,}, N = {len(X)}), "
        f"rho = {args.rho}, median of {args.repeats}. Command: `python bench/bench_sharpness.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
        "| case | seconds | × gradient | gradient passes | loss passes | matvecs | value |",
        "|---|---|---|---|---|---|---|",
        f"| one full-data gradient | {grad_s:.4f} | 1.0 | 1 | | | |",
    ]
    for name, kw in cases.items():
        secs, r = timed(
            lambda kw=kw: lf.sharpness(model, loss_fn, (X, y), args.rho, steps=20, **kw),
            args.repeats,
        )
        st = r.settings
        lines.append(
            f"| {name} | {secs:.4f} | {secs / grad_s:.1f} | {st['n_gradients']} | "
            f"{st['n_loss_evals']} | {st['n_matvecs']} | ≥ {r.value:.5g} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
