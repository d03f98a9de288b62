"""HVP engines against one gradient: time per vector and peak memory, per workload and block.

For each workload of the zoo (digits MLP on all 1797 digits; ResNet-20 with BatchNorm on 128
CIFAR-shaped images; a 110k-parameter transformer language model on 64 × 32 tokens; and,
on request, a language-model head with 1k or 32k classes, ``lm_head_1k``/``lm_head_32k``)
and each engine of :class:`landscape_fast.Hessian` (``reverse``, ``cached``, ``forward``,
``finite_difference``; on request ``cached_unfused``, the cached engine with PyTorch's own
cross-entropy double backward instead of the fused ``softmax_ce_hvp``), a product with a
block of ``k`` vectors is timed (median of ``--repeats`` runs after one warm-up product,
which also builds the cached engine's graphs) and divided by ``k``; the baseline is one
plain PyTorch gradient of the same loss on the same data (``torch.autograd.grad``), timed
the same way in the same process.

Peak memory: every case runs in a fresh subprocess, which records ``ru_maxrss`` after the
model, data and operator exist and again after the timed products; the difference is the
extra resident memory the products needed (allocator caching included, so it is an upper
bound of what the engine held). The gradient row gives the same number for one gradient.

Run (one thread, quiet machine)::

    OMP_NUM_THREADS=1 python bench/bench_hvp.py --out bench/results/hvp_cpu.md

The fused cross-entropy at large vocabularies::

    OMP_NUM_THREADS=1 python bench/bench_hvp.py --workloads lm_head_1k lm_head_32k \
        --engines cached cached_unfused --ks 1 8

A quick smoke run: ``python bench/bench_hvp.py --workloads digits_mlp --ks 1 --repeats 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WORKLOADS = ("digits_mlp", "resnet20", "transformer", "lm_head_1k", "lm_head_32k")
DEFAULT_WORKLOADS = WORKLOADS[:3]
ENGINES = ("reverse", "cached", "forward", "finite_difference", "cached_unfused")
DEFAULT_ENGINES = ENGINES[:4]


def lm_head(classes: int, tiny: bool = False):
    """A language-model head: 256 token features (d = 64) -> ``classes`` logits, CE loss.

    The exact Hessian of such a head is dominated by the cross-entropy's second derivative
    at large vocabularies, which is what ``cached`` (fused ``softmax_ce_hvp``) and
    ``cached_unfused`` (PyTorch's double backward of ``cross_entropy``) differ in.
    """
    import torch
    from torch import nn

    n, d = (16, 8) if tiny else (256, 64)
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, classes))
    X = torch.randn(n, d, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return model, nn.CrossEntropyLoss(), (X, y)


KS = (1, 4, 16)


def run_case(workload: str, engine: str, k: int, repeats: int, tiny: bool) -> dict:
    """Time one case in this process; returns seconds per product and memory in MB."""
    import resource
    import statistics

    import torch

    import landscape_fast as lf
    from landscape_fast import zoo

    torch.manual_seed(0)
    if workload.startswith("lm_head"):
        classes = {"lm_head_1k": 1000, "lm_head_32k": 32000}[workload]
        model, loss_fn, (X, y) = lm_head(classes, tiny)
    else:
        model, loss_fn, (X, y) = zoo.WORKLOADS[workload](tiny=tiny)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    p = sum(t.numel() for t in params)

    if engine == "gradient":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def product() -> None:
            with sdpa_kernel(SDPBackend.MATH):
                torch.autograd.grad(loss_fn(model(X), y), params)

        note = ""
    else:
        if engine == "cached_unfused":
            from landscape_fast.operators.engines import CachedEngine
            from landscape_fast.operators.memory import default_budget

            hvp = CachedEngine(default_budget(X.device, None), fused_cross_entropy=False)
        else:
            hvp = engine
        H = lf.Hessian(model, loss_fn, (X, y), hvp=hvp)
        V = torch.randn(k, p, generator=torch.Generator().manual_seed(1))

        def product() -> None:
            H.matmat(V)

        note = ""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    product()  # warm-up: allocator, cached graphs, batching choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        times.append(time.perf_counter() - start)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if engine.startswith("cached"):
        eng = H._engine
        note = eng.batching_note or ""
    return {
        "workload": workload,
        "engine": engine,
        "k": k,
        "p": p,
        "seconds": statistics.median(times),
        "min_seconds": min(times),
        "peak_mb": (rss1 - rss0) / 1024,
        "threads": torch.get_num_threads(),
        "note": note,
    }


def run_subprocess(workload: str, engine: str, k: int, repeats: int, tiny: bool) -> dict:
    """:func:`run_case` in a fresh interpreter (clean peak-memory accounting)."""
    cmd = [sys.executable, __file__, "--case", workload, engine, str(k), "--repeats", str(repeats)]
    if tiny:
        cmd.append("--tiny")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        err = (res.stderr.strip().splitlines() or ["?"])[-1]
        return {"workload": workload, "engine": engine, "k": k, "error": err[:200]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def render(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown table: time per vector, ratio to one gradient and to one reverse HVP."""
    grad = {r["workload"]: r for r in rows if r["engine"] == "gradient" and "error" not in r}
    single = {
        r["workload"]: r["seconds"]
        for r in rows
        if r["engine"] == "reverse" and r.get("k") == 1 and "error" not in r
    }
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(["python bench/bench_hvp.py", *sys.argv[1:]])
    lines = [
        f"HVP engines, {time.strftime('%Y-%m-%d')}, OMP_NUM_THREADS={threads}, median of "
        f"{args.repeats} after a warm-up. Command: `{command}`",
        "",
        "| workload | p | engine | k | ms / vector | × gradient | × single reverse HVP | "
        "peak extra MB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['workload']} | | {r['engine']} | {r['k']} | error: {r['error']} |")
            continue
        per = r["seconds"] / r["k"]
        g = grad.get(r["workload"])
        xg = f"{per / g['seconds']:.2f}" if g else ""
        s = single.get(r["workload"])
        xs = f"{per / s:.2f}" if s and r["engine"] != "gradient" else ""
        lines.append(
            f"| {r['workload']} | {r['p']:,} | {r['engine']} | {r['k']} | {per * 1e3:.1f} | {xg} | "
            f"{xs} | {r['peak_mb']:.0f} | {r.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=list(DEFAULT_WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES), choices=ENGINES)
    ap.add_argument("--ks", nargs="+", type=int, default=list(KS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="the zoo's tiny workloads (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--case", nargs=3, metavar=("WORKLOAD", "ENGINE", "K"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        w, e, k = args.case
        print(json.dumps(run_case(w, e, int(k), args.repeats, args.tiny)))
        return 0
    rows = []
    for w in args.workloads:
        rows.append(run_subprocess(w, "gradient", 1, args.repeats, args.tiny))
        for e in args.engines:
            for k in args.ks:
                rows.append(run_subprocess(w, e, k, args.repeats, args.tiny))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = render(rows, args)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
