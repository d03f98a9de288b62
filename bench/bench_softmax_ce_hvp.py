r"""Benchmark ``softmax_ce_hvp`` (fused) against the ways to get the same product without it.

Run (from the repository root, after building the extension)::

    OMP_NUM_THREADS=1 python bench/bench_softmax_ce_hvp.py                 # C in {10, 1e3, 32e3}
    OMP_NUM_THREADS=1 python bench/bench_softmax_ce_hvp.py --out bench/results/softmax_ce_hvp_cpu.md
    python bench/bench_softmax_ce_hvp.py --classes 10 50 --tokens 8 --k 2 --repeats 2  # smoke

For logits ``z`` ``(N, C)`` (``N`` tokens), ``k`` tangents ``U`` ``(k, N, C)`` and weights
``w = 1/N`` (a mean loss), every method computes
``out[j, n] = w_n (diag(p_n) − p_n p_nᵀ) U[j, n]``, ``p_n = softmax(z_n)``, float32:

* ``fused cpp`` / ``fused reference``: :func:`landscape_fast.ops.softmax_ce_hvp` with
  ``backend="cpp"`` / ``"reference"``, allocating the output;
* ``fused cpp, out=U``: the same, in place on a copy of ``U`` (made before the measurement);
* ``unfused torch``: ``p = softmax(z); (p*U − p*(p*U).sum(-1, keepdim=True)) * w[:, None]``,
  the formula in eager PyTorch;
* ``autograd``: what a user does without the op: the weighted cross-entropy
  ``(w * F.cross_entropy(z, y, reduction="none")).sum()``, ``g = ∂/∂z`` with
  ``create_graph=True``, then ``k`` calls ``torch.autograd.grad(g, z, U[j],
  retain_graph=True)`` written into a preallocated ``(k, N, C)`` output (graph building
  included in the time).

**Time**: median wall time of ``--repeats`` (>= 5 by default) calls after one warm-up call.

**Peak memory** (honest CPU accounting): each value of ``C`` runs in a fresh subprocess with
glibc's ``MALLOC_MMAP_THRESHOLD_=65536``, so every buffer above 64 KiB is its own ``mmap``
and goes back to the OS when freed (no allocator cache hides or keeps memory; torch has no
CPU caching allocator). For each method, after ``gc.collect()`` and with the inputs already
allocated and touched, the script reads the resident set ``VmRSS`` (baseline), resets the
kernel's high-water mark (``echo 5 > /proc/self/clear_refs``), runs the method once (the
warm-up call, cold: its output allocation included) and reads ``VmHWM``. Peak = ``VmHWM −
baseline``: every page the method touched at its worst moment, output included (inputs
excluded), whatever allocated it (torch, autograd, OpenMP, the C++ kernel's scratch rows).
Where ``/proc/self/clear_refs`` cannot be written, each method runs in its own subprocess
and peak = ``ru_maxrss`` after − ``VmRSS`` before (same meaning, coarser).

Targets (from the issue) at ``C = 32000``: the fused op's peak memory <= 0.5x and its time
<= 0.7x those of the unfused PyTorch computation. The report gives both ratios per ``C``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["fused_cpp", "fused_cpp_inplace", "fused_reference", "unfused", "autograd"]
LABELS = {
    "fused_cpp": "fused cpp",
    "fused_cpp_inplace": "fused cpp, out=U",
    "fused_reference": "fused reference",
    "unfused": "unfused torch",
    "autograd": "autograd double backward",
}
TARGETS = {"memory": 0.5, "time": 0.7}  # fused cpp / unfused, at C = 32000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", nargs="+", type=int, default=[10, 1000, 32000])
    ap.add_argument("--tokens", type=int, default=256, help="N, rows of logits")
    ap.add_argument("--k", type=int, default=8, help="tangents per token")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per case (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # C, in a subprocess
    ap.add_argument("--worker-methods", nargs="+", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------
# Worker: one C, in a fresh process


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _make_methods(torch, z, U, w, y, k: int):
    import torch.nn.functional as F

    from landscape_fast.ops import softmax_ce_hvp

    scratch = {}

    def fused_cpp():
        return softmax_ce_hvp(z, U, weights=w, backend="cpp")

    def fused_cpp_inplace():
        buf = scratch["U"]
        return softmax_ce_hvp(z, buf, weights=w, out=buf, backend="cpp")

    def fused_reference():
        return softmax_ce_hvp(z, U, weights=w, backend="reference")

    def unfused():
        p = torch.softmax(z, -1)
        return (p * U - p * (p * U).sum(-1, keepdim=True)) * w[:, None]

    def autograd():
        zg = z.detach().requires_grad_()
        loss = (w * F.cross_entropy(zg, y, reduction="none")).sum()
        (g,) = torch.autograd.grad(loss, zg, create_graph=True)
        out = torch.empty_like(U)
        for j in range(k):
            out[j] = torch.autograd.grad(g, zg, U[j], retain_graph=True)[0]
        return out

    def prepare(name: str) -> None:  # outside the measured region
        if name == "fused_cpp_inplace":
            scratch["U"] = U.clone()

    return {
        "fused_cpp": fused_cpp,
        "fused_cpp_inplace": fused_cpp_inplace,
        "fused_reference": fused_reference,
        "unfused": unfused,
        "autograd": autograd,
    }, prepare


def worker(C: int, N: int, k: int, methods: list[str], repeats: int) -> list[dict]:
    import torch

    torch.manual_seed(0)
    z = 3 * torch.randn(N, C)
    U = torch.randn(k, N, C)
    w = torch.full((N,), 1.0 / N)
    y = torch.randint(0, C, (N,))
    fns, prepare = _make_methods(torch, z, U, w, y, k)
    # One-time costs (extension import, autograd engine start-up, first-call allocations)
    # are paid on a tiny case first, so they count neither as time nor as peak memory.
    tiny = (torch.randn(2, 3), torch.randn(k, 2, 3), torch.full((2,), 0.5), y[:2] % 3)
    tiny_fns, tiny_prepare = _make_methods(torch, *tiny, k)
    for name in methods:
        tiny_prepare(name)
        tiny_fns[name]()
    reset = _can_reset_hwm()
    want = None
    rows = []
    for name in methods:
        prepare(name)
        gc.collect()
        base = _status_kb("VmRSS")
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        out = fns[name]()
        peak_kb = (
            _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        peak = max(0, peak_kb - base) * 1024
        if want is None:
            want = out.clone()
        err = (out - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        del out
        times = []
        for _ in range(repeats):
            prepare(name)
            gc.collect()
            t0 = time.perf_counter()
            res = fns[name]()
            times.append(time.perf_counter() - t0)
            del res
        rows.append(
            {
                "C": C,
                "N": N,
                "k": k,
                "method": name,
                "ms": statistics.median(times) * 1e3,
                "peak_bytes": peak,
                "rel_diff": err,
                "hwm_reset": reset,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------
# Driver


def _run_worker(args: argparse.Namespace, C: int, methods: list[str]) -> list[dict]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        OMP_WAIT_POLICY=env.get("OMP_WAIT_POLICY", "PASSIVE"),
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="0",
        LANDSCAPE_FAST_BACKEND="",
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(C)]
    cmd += ["--tokens", str(args.tokens), "--k", str(args.k), "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads), "--worker-methods", *methods]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for C={C} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for C in args.classes:
        first = _run_worker(args, C, args.methods)
        if first and not first[0]["hwm_reset"]:  # one process per method instead
            first = [r for m in args.methods for r in _run_worker(args, C, [m])]
        rows += first
        for r in first:
            print(format_row(r, rows), file=sys.stderr, flush=True)
    return rows


def _baseline(r: dict, rows: list[dict]) -> dict | None:
    return next((b for b in rows if b["C"] == r["C"] and b["method"] == "unfused"), None)


def format_row(r: dict, rows: list[dict]) -> str:
    base = _baseline(r, rows)
    t_ratio = f"{r['ms'] / base['ms']:.2f}" if base else "-"
    m_ratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if base and base["peak_bytes"] else "-"
    return (
        f"| {r['C']} | {r['N']} | {r['k']} | {LABELS[r['method']]} | {r['ms']:.2f} | "
        f"{r['peak_bytes'] / 2**20:.1f} | {t_ratio} | {m_ratio} | {r['rel_diff']:.1e} |"
    )


def render(rows: list[dict], args: argparse.Namespace) -> str:
    import torch

    out_mb = {C: args.k * args.tokens * C * 4 / 2**20 for C in args.classes}
    lines = [
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, float32, "
        f"N={args.tokens} tokens, k={args.k} tangents, median of {args.repeats} calls.",
        "Peak = resident-set high-water mark during one call minus the resident set before "
        "it (inputs excluded, output included); see the script's docstring.",
        "Output size (k, N, C) float32: "
        + ", ".join(f"C={C}: {mb:.1f} MB" for C, mb in out_mb.items())
        + ".",
        "",
        "| C | N | k | method | ms | peak MB | time / unfused | peak / unfused | "
        "max rel diff vs first |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [format_row(r, rows) for r in rows]
    summary = []
    for C in args.classes:
        fused = next((r for r in rows if r["C"] == C and r["method"] == "fused_cpp"), None)
        base = next((r for r in rows if r["C"] == C and r["method"] == "unfused"), None)
        if fused and base:
            t = fused["ms"] / base["ms"]
            m = fused["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] else float("nan")
            line = f"| {C} | {t:.2f} | {m:.2f} |"
            if C == 32000:
                ok_t = "met" if t <= TARGETS["time"] else "MISSED"
                ok_m = "met" if m <= TARGETS["memory"] else "MISSED"
                line += (
                    f" time <= {TARGETS['time']}: {ok_t}; memory <= {TARGETS['memory']}: {ok_m} |"
                )
            else:
                line += " - |"
            summary.append(line)
    if summary:
        lines += [
            "",
            "Fused cpp op / unfused PyTorch (targets at C = 32000: time <= 0.7, peak <= 0.5):",
            "",
            "| C | time ratio | peak-memory ratio | target |",
            "|---|---|---|---|",
            *summary,
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        rows = worker(args.worker, args.tokens, args.k, args.worker_methods, args.repeats)
        for r in rows:
            print(json.dumps(r), flush=True)
        return 0
    from landscape_fast import _backend

    if "fused_cpp" in args.methods or "fused_cpp_inplace" in args.methods:
        why = _backend.BACKENDS["cpp"].unavailable_reason()
        if why:
            print(f"backend cpp unavailable: {why}", file=sys.stderr)
            return 2
    rows = run(args)
    report = render(rows, args)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
