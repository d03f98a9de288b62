"""Gradient noise statistics against one full-data gradient, side by side.

Times, on the digits MLP over the full data set (1797 samples, 3,466 parameters, float32):

- ``gradient``: one full-data loss and gradient (``Hessian.loss_and_gradient``, one batch);
- ``noise, norms`` / ``noise, vmap``: ``gradient_noise(..., curvature_samples=0,
  per_sample=...)``: tr Σ, |ḡ|², B_simple from the per-sample norm identities of the
  ``nn.Linear`` layers (the default for this model) or from all per-sample gradients
  (vmap; any model) (target: ≤ 3× the gradient);
- ``noise + B_noise (m)``: the default plus ḡᵀHḡ and tr(HΣ) from ``m`` curvature samples
  (``m + 1`` Hessian-vector products in one block).

Each is the median of ``--repeats`` runs after one warm-up run.

Run (one thread, alone on the machine)::

    OMP_NUM_THREADS=1 python bench/bench_gradient_noise.py --out bench/results/gradient_noise_cpu.md

Smoke run: ``python bench/bench_gradient_noise.py --tiny``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import landscape_fast as lf  # noqa: E402
from landscape_fast.geometry.gradient_noise import gradient_noise  # noqa: E402


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per case (median)")
    ap.add_argument("--curvature-samples", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="small problem (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    from landscape_fast import zoo

    model, loss_fn, data = zoo.WORKLOADS["digits_mlp"](tiny=args.tiny)
    model.eval()
    H = lf.Hessian(model, loss_fn, data)
    grad = median_seconds(H.loss_and_gradient, args.repeats)
    m = args.curvature_samples
    result = gradient_noise(model, loss_fn, data, curvature_samples=m)

    def noise(m: int, per_sample: str = "auto") -> Callable[[], object]:
        return lambda: gradient_noise(
            model, loss_fn, data, curvature_samples=m, per_sample=per_sample
        )

    cases = [("gradient", grad)]
    for label, fn in [
        ("noise, norms (no B_noise)", noise(0, "norms")),
        ("noise, vmap (no B_noise)", noise(0, "vmap")),
        (f"noise + B_noise ({m})", noise(m)),
    ]:
        cases.append((label, median_seconds(fn, args.repeats)))
    lines = [
        f"Gradient noise statistics, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), median of {args.repeats} run(s). Command: "
        "`python bench/bench_gradient_noise.py " + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
        "| workload | N | p | what | seconds | × gradient |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    name = "digits_mlp" + (" (tiny)" if args.tiny else "")
    for what, secs in cases:
        lines.append(
            f"| {name} | {result.n} | {result.p:,} | {what} | {secs:.4f} | {secs / grad:.2f} |"
        )
    lines += ["", f"Result: {result.describe()}"]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
