"""Run every system on every workload and quantity, alternately, and write a markdown table.

For each workload: one full-data gradient is timed (the unit of the ``× grad`` column),
the float64 reference is computed (:mod:`.reference`), then every (quantity, system, mode)
case is settled — ``default`` takes the peer's defaults, ``matched`` climbs the system's
ladder of tighter settings until the accuracy target is met or the ladder ends ("gave
up") — and finally timed ``--repeats`` times, all cases once per repeat in a rotating
order (systems alternate; none runs its repeats back to back). Reported: median wall time
with min–max, its ratio to the gradient, Hessian-vector products (counted by wrapping each
system's HVP), accuracy against the reference, and the peak resident-memory increase
during the run (RSS of this process sampled every 5 ms from ``/proc/self/statm``, minus
the RSS at the start of the run). A peer that does not import or crashes gets its error in
its row. The headline table gives ours/peer time at matched accuracy.

Targets: eigenvalues relative error ≤ 1e-4 each (vs the reference, in the quantity's
order); trace relative standard error ≤ 1 % (the system's own SE, or the SE of its
Hutchinson samples); density: 8 probes × 80 Lanczos steps for every system, accuracy
reported as the errors of the first two moments ``tr(H)/p``, ``tr(H²)/p`` and the
Wasserstein-1 distance to the exact spectral measure (relative to the spectral range).

Usage::

    OMP_NUM_THREADS=1 python -m bench.peers --out bench/results/peers_cpu.md
    python -m bench.peers --tiny --workloads digits_mlp --quantities top1 trace --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import reference as reference_mod  # noqa: E402
from . import systems as systems_mod  # noqa: E402
from . import workloads as workloads_mod  # noqa: E402
from .systems import EIG_K, Raw, System  # noqa: E402

EIG_RTOL = 1e-4
MODES = ("default", "matched")


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Peak RSS increase over the block, sampled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.mib = 0.0

    def __enter__(self) -> PeakRSS:
        self._base = self._peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss())
        self.mib = (self._peak - self._base) / 2**20


@dataclass
class Run:
    raw: Raw | None
    seconds: float
    mib: float
    error: str | None = None


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ").replace("|", "/")
    return msg if len(msg) <= 160 else msg[:157] + "..."


MATH_ATTENTION = True  # --fused-attention turns it off


def _attention() -> contextlib.AbstractContextManager:
    """The math SDPA kernel: CPU's fused (flash) attention has no double backward and no
    forward AD, so every peer crashes on the transformer without it (the peers' documented
    workaround is eager/math attention; ours routes attention to it by itself)."""
    if not MATH_ATTENTION:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def measure(system: System, q: str, w: workloads_mod.Workload, setting: dict) -> Run:
    """One timed, memory-tracked run; a crash becomes ``Run.error``."""
    torch.manual_seed(0)
    with PeakRSS() as mem, _attention():
        start = time.perf_counter()
        try:
            raw = system.run(q, w, setting)
            error = None
        except Exception as e:  # noqa: BLE001 - every failure goes into the table
            raw, error = None, _err(e)
            if os.environ.get("BENCH_PEERS_TRACEBACK"):
                traceback.print_exc()
        seconds = time.perf_counter() - start
    w.clear_grads()
    return Run(raw, seconds, mem.mib, error)


# ---------------------------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------------------------


def wasserstein_1(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> float:
    """W1 between two discrete probability measures on the line: ∫ |F_a − F_b| dt."""
    support = np.concatenate([a, b])
    order = np.argsort(support, kind="stable")
    t = support[order]
    jumps = np.concatenate([wa / wa.sum(), -wb / wb.sum()])[order]
    return float(np.sum(np.abs(np.cumsum(jumps)[:-1]) * np.diff(t)))


@dataclass
class Accuracy:
    text: str
    met: bool | None  # None: no target for this quantity / no way to tell
    value: float = math.nan


def accuracy(q: str, raw: Raw, ref: reference_mod.Reference) -> Accuracy:
    """The answer's accuracy against the reference and whether the target is met."""
    if q in EIG_K:
        k = EIG_K[q]
        want = ref.bottom[:k] if q == "bottom1" else ref.top[:k]
        got = raw.values if raw.values is not None else np.zeros(0)
        if got.size < k:
            return Accuracy(f"{got.size} of {k} eigenvalues", False, math.inf)
        err = float(np.max(np.abs(got[:k] - want) / np.abs(want)))
        return Accuracy(f"max rel. err {err:.1e}", err <= EIG_RTOL, err)
    if q == "trace":
        assert raw.trace is not None
        err = abs(raw.trace - ref.trace) / abs(ref.trace)
        if raw.stderr is None or not math.isfinite(raw.stderr):
            return Accuracy(f"SE n/a; err {err:.1%}", None, math.nan)
        rse = raw.stderr / abs(raw.trace)
        return Accuracy(f"SE {rse:.2%}; err {err:.2%}", rse <= systems_mod.TRACE_RTOL, rse)
    assert raw.nodes is not None and raw.weights is not None
    wsum = raw.weights.sum()
    m1 = float((raw.weights * raw.nodes).sum() / wsum)
    m2 = float((raw.weights * raw.nodes**2).sum() / wsum)
    e1 = abs(m1 - ref.m1) / max(abs(ref.m1), 1e-30)
    e2 = abs(m2 - ref.m2) / ref.m2
    text = f"m1 {e1:.1%}, m2 {e2:.1%}"
    w1 = math.nan
    if ref.eigenvalues is not None:
        lam = ref.eigenvalues
        w1 = wasserstein_1(raw.nodes, raw.weights, lam, np.full(lam.size, 1.0 / lam.size))
        w1 /= float(lam[-1] - lam[0])
        text += f", W1/range {w1:.1e}"
    return Accuracy(text, None, w1)


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    q: str
    system: System
    mode: str
    setting: dict | None = None
    status: str = ""  # "", "gave up: ...", "not installed: ...", "not supported: ..."
    tried: int = 0
    runs: list[Run] = field(default_factory=list)
    ref: reference_mod.Reference | None = None

    @property
    def runnable(self) -> bool:
        return self.setting is not None


def settle(case: Case, w: workloads_mod.Workload, ref: reference_mod.Reference, log) -> None:
    """Fix ``case.setting``: the defaults, or the first rung of the ladder that meets the
    target (the last rung tried, marked "gave up", when none does)."""
    s, q = case.system, case.q
    if case.mode == "default":
        case.setting = s.default(q, w)
        return
    setting = s.start(q, w)
    while True:
        case.tried += 1
        run = measure(s, q, w, setting)
        log(f"  search {s.name} {q}: {setting} -> {run.error or _describe(q, run, ref)}")
        if run.error is not None or run.raw is None:
            case.setting = setting  # the timed runs record the error
            return
        acc = accuracy(q, run.raw, ref)
        if acc.met is not False:
            case.setting = setting
            if acc.met:
                _shrink(case, w, ref, run.raw, log)
            return
        try:
            nxt = s.refine(q, w, setting, run.raw)
        except Exception as e:  # noqa: BLE001 - a harness bug must not hide the other rows
            nxt = f"no next setting ({_err(e)})"
        if isinstance(nxt, str):
            case.setting, case.status = setting, f"gave up: {nxt}"
            return
        setting = nxt


def _shrink(
    case: Case, w: workloads_mod.Workload, ref: reference_mod.Reference, raw: Raw, log
) -> None:
    """After a met target: try the system's cheaper settings (:meth:`System.shrink`) and
    keep one that still meets it with fewer products, then ask again from there. A ladder's
    rungs are a decade apart and a fixed budget's first rung may overshoot: no system is
    timed at a setting that spends more than it needs."""
    s, q = case.system, case.q
    tried: set[str] = set()
    improved = True
    while improved:
        improved = False
        for cheaper in s.shrink(q, w, case.setting, raw):
            if repr(cheaper) in tried:
                continue
            tried.add(repr(cheaper))
            case.tried += 1
            run = measure(s, q, w, cheaper)
            log(f"  shrink {s.name} {q}: {cheaper} -> {run.error or _describe(q, run, ref)}")
            if run.error is not None or run.raw is None:
                continue
            fewer = (run.raw.matvecs or 0) < (raw.matvecs or 0)
            if fewer and accuracy(q, run.raw, ref).met:
                case.setting, raw, improved = cheaper, run.raw, True
                break


def _describe(q: str, run: Run, ref: reference_mod.Reference) -> str:
    assert run.raw is not None
    return f"{accuracy(q, run.raw, ref).text}, {run.raw.matvecs} products, {run.seconds:.2f} s"


def _fmt_setting(setting: dict | None) -> str:
    if not setting:
        return "defaults" if setting == {} else ""
    parts = []
    for k, v in setting.items():
        if isinstance(v, float) and v not in (0.0,) and math.isfinite(v):
            v = f"{v:g}"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _row(case: Case, grad: float) -> list[str]:
    sysname, q, mode = case.system.name, case.q, case.mode
    head = [q, sysname, mode, _fmt_setting(case.setting)]
    if not case.runnable:
        return head + [case.status, "", "", "", "", ""]
    errors = [r.error for r in case.runs if r.error]
    if errors:
        return head + [f"error: {errors[0]}", "", "", "", "", ""]
    times = [r.seconds for r in case.runs]
    med = statistics.median(times)
    span = f"{med:.3g} ({min(times):.3g}–{max(times):.3g})"
    raw = case.runs[0].raw
    assert raw is not None
    ref = case.ref
    assert ref is not None
    acc = accuracy(q, raw, ref)
    status = case.status or (
        "met" if acc.met else ("missed" if acc.met is False else "ok (no target)")
    )
    if case.mode == "matched" and case.tried and acc.met is not None:
        status += f" (rung {case.tried})"
    if raw.note:
        status += f" ({raw.note})"
    mv = raw.matvecs if raw.matvecs is not None else "n/a"
    mib = max(r.mib for r in case.runs)
    return head + [status, span, f"{med / grad:.3g}", str(mv), acc.text, f"{mib:.1f}"]


def _median_time(case: Case) -> float | None:
    if not case.runnable or not case.runs or any(r.error for r in case.runs):
        return None
    return statistics.median(r.seconds for r in case.runs)


def headline(cases: list[Case], peers: list[str], quantities: list[str]) -> list[str]:
    """ours/peer time at matched accuracy, one row per quantity."""
    lines = [
        "| quantity | " + " | ".join(f"ours/{p}" for p in peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    by = {(c.q, c.system.name): c for c in cases if c.mode == "matched"}
    for q in quantities:
        ours = by.get((q, "ours"))
        t_ours = _median_time(ours) if ours else None
        cells = []
        for p in peers:
            c = by.get((q, p))
            t = _median_time(c) if c else None
            if c is None or not c.runnable:
                cells.append("—")
            elif t is None:
                cells.append("— (peer failed)")
            elif t_ours is None or (ours and ours.status):
                cells.append("— (ours failed)")
            elif c.status:
                cells.append(f"{t_ours / t:.3g} (peer gave up)")
            elif t_ours <= t:
                cells.append(f"{t_ours / t:.3g} (ours {t / t_ours:.3g}× faster)")
            else:
                cells.append(f"{t_ours / t:.3g} (ours {t_ours / t:.3g}× slower)")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return lines


def _matvecs(case: Case) -> int | None:
    runs = [r for r in case.runs if r.raw is not None and r.raw.matvecs]
    return runs[0].raw.matvecs if runs else None


def decomposition(
    cases: list[Case], peers: list[str], quantities: list[str], grad: float
) -> list[str]:
    """Where each headline ratio comes from: time = products × time per product, so
    ours/peer = (products ours/peer) × (time per product ours/peer). The time per product
    includes everything else a system does (building the operator, its solver's own work)."""
    lines = [
        "| quantity | ours: products, ms per product (× grad) | "
        + " | ".join(f"vs {p}: products · per product" for p in peers)
        + " |",
        "|---|---|" + "---|" * len(peers),
    ]
    by = {(c.q, c.system.name): c for c in cases if c.mode == "matched"}
    for q in quantities:
        ours = by.get((q, "ours"))
        t_ours = _median_time(ours) if ours else None
        n_ours = _matvecs(ours) if ours else None
        if t_ours is None or not n_ours:
            continue
        per_ours = t_ours / n_ours
        cells = [f"{n_ours}, {per_ours * 1e3:.3g} ms ({per_ours / grad:.2g})"]
        for p in peers:
            c = by.get((q, p))
            t = _median_time(c) if c else None
            n = _matvecs(c) if c else None
            if t is None or not n:
                cells.append("—")
                continue
            cells.append(f"{n_ours}/{n} = {n_ours / n:.2g} · {per_ours / (t / n):.2g}")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return lines


def run_workload(name: str, args: argparse.Namespace, systems: list[System], log) -> list[str]:
    w = workloads_mod.load(name, args.tiny, trained=not args.untrained, samples=args.samples)
    grad = workloads_mod.gradient_seconds(w)
    log(f"{name}: p={w.p}, gradient {grad * 1e3:.2f} ms; computing the reference ...")
    ref, hit = reference_mod.cached(w, None if args.no_reference_cache else args.reference_cache)
    origin = "from the cache (computed" if hit else "computed"
    log(f"  reference ({ref.method}) {origin} in {ref.seconds:.1f} s{')' if hit else ''}")

    cases: list[Case] = []
    for q in args.quantities:
        for s in systems:
            for mode in MODES:
                c = Case(q, s, mode, ref=ref)
                err = s.import_error()
                if err is not None:
                    c.status = f"not installed: {err}"
                elif not s.supports(q):
                    c.status = f"not supported: {s.unsupported.get(q, 'no such estimator')}"
                cases.append(c)
    for c in cases:
        if not c.status:
            settle(c, w, ref, log)
    timed = [c for c in cases if c.runnable]
    for r in range(args.repeats):
        order = timed[r % len(timed) :] + timed[: r % len(timed)] if timed else []
        for c in order:
            c.runs.append(measure(c.system, c.q, w, c.setting or {}))
        log(f"  repeat {r + 1}/{args.repeats} done")

    lines = [
        f"### {name}{' (tiny)' if args.tiny else ''}",
        "",
        f"p = {w.p}, {w.X.shape[0]} samples, {w.trained}, eval mode. One full-data gradient: "
        f"{grad * 1e3:.3g} ms. Reference: {ref.method}; trace {ref.trace:.6g} "
        f"({ref.trace_method}); λmax {ref.top[0]:.6g}, λmin {ref.bottom[0]:.6g}.",
        "",
        "| quantity | system | mode | setting | status | time s, median (min–max) | × grad "
        "| matvecs | accuracy | peak RSS Δ MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(x.replace("|", "/") for x in _row(c, grad)) + " |" for c in cases]
    peers = [s.name for s in systems if s.name != "ours"]
    if any(s.name == "ours" for s in systems) and peers:
        lines += [
            "",
            f"Headline ({name}): ours/peer wall time at matched accuracy (< 1: ours is faster).",
            "",
        ]
        lines += headline(cases, peers, args.quantities)
        lines += [
            "",
            f"Decomposition ({name}, matched accuracy): ours/peer time = (products ours/peer) "
            "× (time per product ours/peer); a peer's time per product includes building its "
            "operator and its solver's own work, as ours does.",
            "",
        ]
        lines += decomposition(cases, peers, args.quantities, grad)
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=list(workloads_mod.NAMES))
    ap.add_argument("--quantities", nargs="+", default=list(systems_mod.QUANTITIES))
    ap.add_argument("--systems", nargs="+", default=list(systems_mod.SYSTEMS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny workloads (smoke test)")
    ap.add_argument("--untrained", action="store_true", help="skip training (initialisation)")
    ap.add_argument("--max-matvecs", type=int, default=20000, help="cap of a matched search")
    ap.add_argument(
        "--samples",
        type=int,
        default=None,
        help="measure the Hessian on the first N samples (training uses all of them)",
    )
    ap.add_argument("--out", type=Path, default=Path("results.md"))
    ap.add_argument(
        "--fused-attention",
        action="store_true",
        help="leave PyTorch's attention kernel choice alone (the peers crash on the transformer)",
    )
    ap.add_argument(
        "--reference-cache",
        type=Path,
        default=reference_mod.CACHE_DIR,
        help="where references are kept between runs (keyed by model, data and method)",
    )
    ap.add_argument("--no-reference-cache", action="store_true", help="always recompute")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    global MATH_ATTENTION
    MATH_ATTENTION = not args.fused_attention
    for opt, allowed in (
        ("workloads", workloads_mod.NAMES),
        ("quantities", systems_mod.QUANTITIES),
        ("systems", tuple(systems_mod.SYSTEMS)),
    ):
        bad = [x for x in getattr(args, opt) if x not in allowed]
        if bad:
            ap.error(f"--{opt}: unknown {bad}; choose from {list(allowed)}")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    systems = [systems_mod.SYSTEMS[n](max_matvecs=args.max_matvecs) for n in args.systems]
    versions = ", ".join(
        f"{s.name} {s.version() if s.import_error() is None else '(' + s.version() + ')'}"
        for s in systems
    )
    cmd = "python -m bench.peers " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"## Peer benchmark, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); "
        f"repeats {args.repeats}, systems run alternately. Versions: {versions}.",
        "",
        f"Command: `{cmd}`",
        "",
        "Targets: eigenvalues rel. error ≤ 1e-4 each; trace rel. SE ≤ 1 %; density 8 probes "
        "× 80 steps (moments and W1 reported, no target). Time includes building the "
        "operator. Peak RSS Δ: process RSS sampled every 5 ms minus RSS at the start. "
        + (
            "All systems run under the math SDPA kernel (fused CPU attention has no double "
            "backward)."
            if MATH_ATTENTION
            else "Attention kernels left to PyTorch."
        ),
        "",
    ]
    for name in args.workloads:
        lines += run_workload(name, args, systems, log)
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
