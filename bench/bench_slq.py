"""Spectral density by SLQ: probes as one block vs one after another, and its accuracy.

For each workload, ``lf.spectral_density(H, num_probes, num_steps)`` runs

- as one lockstep block (every operator product serves all probes: one pass over the data
  per Lanczos step), and
- with ``block_size=1`` (the probes one after another, as PyHessian and most research
  scripts run them),

alternately, ``--repeats`` times each; the table gives median wall times, their ratio, and
the time per product. Both give the same numbers (same seeds). The HVP engine matters: the
``cached`` engine (our default) keeps the first-order graph across products, so even
one-vector products skip the forward pass; the ``reverse`` engine recomputes it every time
(what one-probe-at-a-time codes do), so there the block saves a forward pass per product.

Accuracy (digits MLP, where the dense float64 Hessian is available): the Wasserstein-1
distance between the SLQ spectral measure (nodes with weights) and the exact eigenvalue
distribution, relative to the spectral range :math:`\\lambda_{max} - \\lambda_{min}`.

Run (one thread, alone on the machine)::

    OMP_NUM_THREADS=1 python bench/bench_slq.py --out bench/results/slq_cpu.md

Smoke run: ``python bench/bench_slq.py --tiny --repeats 1``.
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

WORKLOADS = ("digits_mlp", "transformer")
ENGINES = ("cached", "reverse")


def wasserstein_1(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> float:
    """W1 between two discrete probability measures on the line: ∫ |F_a − F_b| dt."""
    support = np.concatenate([a, b])
    order = np.argsort(support, kind="stable")
    t = support[order]
    jumps = np.concatenate([wa / wa.sum(), -wb / wb.sum()])[order]
    cdf_diff = np.cumsum(jumps)[:-1]
    return float(np.sum(np.abs(cdf_diff) * np.diff(t)))


def slq_measure(d: lf.SpectralDensity) -> tuple[np.ndarray, np.ndarray]:
    """Support and mass of the SLQ spectral measure (probes averaged, point masses added)."""
    mask = d.mask
    nodes = d.nodes[mask].numpy()
    mass = (d.scaled_weights[mask] / d.num_probes).numpy()
    pm = d.point_masses.numpy()
    return np.concatenate([nodes, pm]), np.concatenate([mass, np.full(pm.size, 1.0 / d.p)])


def workload(name: str, tiny: bool, trained: bool, device: str = "cpu"):
    from landscape_fast import zoo

    model, loss_fn, data = zoo.WORKLOADS[name](tiny=tiny)
    if trained:
        zoo.train(model, *data, loss_fn=loss_fn, max_epochs=2 if tiny else 30)
    model.eval()
    return model.to(device), loss_fn, tuple(t.to(device) for t in data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--untrained", action="store_true", help="at initialization")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tiny", action="store_true", help="small problems (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"SLQ, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), device {args.device}, "
        f"{args.probes} probes × {args.steps} steps, "
        f"median of {args.repeats}. Command: `python bench/bench_slq.py {cmd}`",
        "",
        "| workload | p | engine | one block (s) | one at a time (s) | speed-up | ms / product "
        "(block) | ms / gradient |",
        "|---|---|---|---|---|---|---|---|",
    ]
    accuracy = []
    for name in args.workloads:
        model, loss_fn, data = workload(name, args.tiny, not args.untrained, args.device)
        for engine in args.engines:
            H = lf.Hessian(model, loss_fn, data, hvp=engine)
            H.matmat(torch.zeros(1, H.shape[0], device=H.device))  # warm-up (engine, caches)
            start = time.perf_counter()
            for _ in range(3):
                H.loss_and_gradient()
            if H.device.type == "cuda":
                torch.cuda.synchronize()
            grad_ms = 1e3 * (time.perf_counter() - start) / 3
            block, single = [], []
            for _ in range(args.repeats):  # alternate the two modes
                for block_size, times in ((None, block), (1, single)):
                    start = time.perf_counter()
                    d = lf.spectral_density(H, args.probes, args.steps, block_size=block_size)
                    times.append(time.perf_counter() - start)
            tb, ts = statistics.median(block), statistics.median(single)
            row = (
                f"| {name} | {H.shape[0]:,} | {engine} | {tb:.2f} | {ts:.2f} | {ts / tb:.2f}× | "
                f"{1e3 * tb / d.n_matvecs:.2f} | {grad_ms:.2f} |"
            )
            lines.append(row)
            print(row, file=sys.stderr, flush=True)
        if name == "digits_mlp":
            X, y = data
            dense = lf.Hessian(model.double(), loss_fn, (X.double(), y)).to_dense().cpu()
            model.float()
            eigs = np.linalg.eigvalsh(((dense + dense.T) / 2).numpy())
            span = float(eigs[-1] - eigs[0])
            exact = np.full(eigs.size, 1.0 / eigs.size)
            for refine, reorth in ((0, True), (10, True), (0, False)):
                for seed in range(args.repeats):
                    d = lf.spectral_density(
                        lf.Hessian(model, loss_fn, data), args.probes, args.steps, seed=seed,
                        refine=refine, reorthogonalize=reorth,
                    )  # fmt: skip
                    w1 = wasserstein_1(*slq_measure(d), eigs, exact)
                    accuracy.append(
                        f"| {name} | {refine} | {'full' if reorth else 'last two'} | {seed} | "
                        f"{w1:.3e} | {span:.3e} | {100 * w1 / span:.3f} % | {d.n_matvecs} |"
                    )
    if accuracy:
        lines += [
            "",
            "Wasserstein-1 distance of the SLQ measure to the exact spectrum (float32 Hessian "
            "vs dense float64 eigenvalues):",
            "",
            "| workload | refine | reorthogonalization | seed | W1 | λmax − λmin | W1 / range "
            "| matvecs |",
            "|---|---|---|---|---|---|---|---|",
            *accuracy,
        ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
