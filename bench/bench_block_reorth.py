r"""Benchmark ``block_reorth`` per backend against the machine's copy bandwidth.

Run (from the repository root, after building the extension)::

    python bench/bench_block_reorth.py                      # p in {1e5, 1e6, 1e7}, shapes
                                                            # above --max-bytes skipped
    python bench/bench_block_reorth.py --max-bytes 0 --repeats 3 --out bench/results/x.md

What it measures, in one run:

* **Copy bandwidth** per thread count: ``dst.copy_(src)`` of a large float32 buffer
  (``--copy-mb``), bytes read + bytes written over the median time of 7 copies.
* For every ``threads x p x m x b x basis`` and backend: the median wall time of
  ``block_reorth(Q, W, inplace=True, backend=...)`` over ``--repeats`` runs, each on a fresh
  copy of ``W`` made outside the timed region. ``Q`` has i.i.d. ``N(0, 1/p)`` entries (rows
  nearly orthonormal for ``p >> m``); the basis is stored as float32, bfloat16 or float16,
  the block ``W`` is always float32.

Bytes each backend must stream (``sQ``, ``sW``: element sizes of the basis and the block;
one *row* is ``p`` elements)::

    cpp (fused):  3 m p sQ  +  9 b p sW
        project: Q + W;  update: Q + 2W (read, write);  update + Gram: Q + 2W;
        transform + Gram: 2W;  transform: 2W.
    reference:    [m p (sQ + sW) if the basis is low precision: Q.to(W.dtype)]
                  + 4 m p sW               (two sweeps x (Q W^T, C^T Q) on the float32 basis)
                  + 11 b p sW              (norms; per sweep: W, C^T Q temp write + read, W r/w)
                  + (3 b (b - 1) + 13 (b - 1) + 3) p sW
                                           (in-block Gram-Schmidt, vector by vector: gathers of
                                            the accepted rows, two projections, norm, scaling)

GB/s = bytes / time; "% copy" compares it with the copy bandwidth at the same thread count.
GFLOP/s of the cpp backend counts 2 flops per multiply-add:
``4 m b p`` (CGS2) ``+ 2 b^2 p`` (two transforms) ``+ b (b + 1) p`` (two float64 Grams)
``+ b p`` (norms). The output is a markdown table ready for BENCHMARKS.md (``--out``) and
optionally a CSV (``--csv``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

BASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--p", nargs="+", type=float, default=[1e5, 1e6, 1e7], help="vector lengths")
    ap.add_argument("--m", nargs="+", type=int, default=[8, 32, 128], help="basis sizes")
    ap.add_argument("--b", nargs="+", type=int, default=[1, 4, 16], help="block sizes")
    ap.add_argument("--basis", nargs="+", choices=list(BASES), default=list(BASES))
    ap.add_argument("--backends", nargs="+", default=["reference", "cpp"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    ap.add_argument(
        "--max-bytes",
        type=float,
        default=3e9,
        help="skip cases whose memory footprint (Q, its float32 copy in the reference, two "
        "copies of W) exceeds this many bytes; 0 = no limit (p=1e7, m=128 needs ~11 GB)",
    )
    ap.add_argument("--copy-mb", type=int, default=512, help="copy-bandwidth buffer size (MB)")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    ap.add_argument("--csv", type=Path, help="also write one CSV row per case here")
    return ap.parse_args(argv)


def fused_bytes(m: int, b: int, p: int, sq: int, sw: int) -> int:
    if m == 0:
        return 5 * b * p * sw
    return 3 * m * p * sq + 9 * b * p * sw


def reference_bytes(m: int, b: int, p: int, sq: int, sw: int) -> int:
    conv = m * p * (sq + sw) if sq != sw else 0
    sweeps = (4 * m * p * sw + 10 * b * p * sw) if m > 0 else 0
    norms = b * p * sw
    gs_rows = 3 * b * (b - 1) + 13 * (b - 1) + 3
    return conv + sweeps + norms + gs_rows * p * sw


def fused_flops(m: int, b: int, p: int) -> float:
    return 2.0 * (4 * m * b * p + 2 * b * b * p + b * (b + 1) * p + b * p)


def footprint(m: int, b: int, p: int, sq: int, with_reference: bool) -> int:
    ref_copy = m * p * 4 if (with_reference and sq != 4) else 0
    return m * p * sq + ref_copy + 3 * b * p * 4


def copy_bandwidth(torch, megabytes: int, threads: int, median_time) -> float:
    """GB/s of ``dst.copy_(src)`` on float32 buffers (bytes read + written)."""
    torch.set_num_threads(threads)
    src = torch.ones(megabytes * (1 << 20) // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.nbytes / median_time(lambda: dst.copy_(src), 7) / 1e9


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread settings must be in place before torch (and its OpenMP runtime) loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(args.threads)))
    import torch

    from landscape_fast import _backend
    from landscape_fast.ops import block_reorth

    for be in args.backends:
        why = _backend.BACKENDS[be].unavailable_reason() if be in _backend.BACKENDS else "unknown"
        if why:
            print(f"backend {be} unavailable: {why}", file=sys.stderr)
            return 2

    def median_time(fn, repeats: int) -> float:
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    # Copy bandwidth per thread count.
    copy_bw = {t: copy_bandwidth(torch, args.copy_mb, t, median_time) for t in args.threads}

    # Load every backend once on a tiny case (imports, extension load).
    q0 = torch.randn(2, 64)
    for be in args.backends:
        block_reorth(q0, torch.randn(1, 64), backend=be)

    rows = []
    skipped = []
    ps = [int(round(p)) for p in args.p]
    for p in ps:
        for m in args.m:
            for basis in args.basis:
                dtype = getattr(torch, BASES[basis])
                sq = torch.empty((), dtype=dtype).element_size()
                fits = [
                    b
                    for b in args.b
                    if not args.max_bytes
                    or footprint(m, b, p, sq, "reference" in args.backends) <= args.max_bytes
                ]
                skipped += [(p, m, b, basis) for b in args.b if b not in fits]
                if not fits:
                    continue
                g = torch.Generator().manual_seed(p + m)
                Q = torch.randn(m, p, generator=g).div_(math.sqrt(p)).to(dtype)
                for b in fits:
                    W0 = torch.randn(b, p, generator=g)
                    for t in args.threads:
                        torch.set_num_threads(t)
                        times = {}
                        for be in args.backends:
                            samples = []
                            for _ in range(args.repeats):
                                W = W0.clone()
                                t0 = time.perf_counter()
                                block_reorth(Q, W, inplace=True, backend=be)
                                samples.append(time.perf_counter() - t0)
                                del W
                            times[be] = statistics.median(samples)
                        row = {
                            "threads": t,
                            "p": p,
                            "m": m,
                            "b": b,
                            "basis": basis,
                            "copy_GBs": copy_bw[t],
                        }
                        for be, sec in times.items():
                            nbytes = (fused_bytes if be != "reference" else reference_bytes)(
                                m, b, p, sq, 4
                            )
                            row[f"{be}_ms"] = sec * 1e3
                            row[f"{be}_bytes"] = nbytes
                            row[f"{be}_GBs"] = nbytes / sec / 1e9
                            row[f"{be}_pct_copy"] = 100 * nbytes / sec / 1e9 / copy_bw[t]
                            if be != "reference":
                                row[f"{be}_GFLOPs"] = fused_flops(m, b, p) / sec / 1e9
                        if "reference" in times and "cpp" in times:
                            row["ref_over_cpp"] = times["reference"] / times["cpp"]
                        rows.append(row)
                        print(format_row(row, args.backends), flush=True)
                    del W0
                del Q

    report = render(rows, args, copy_bw, skipped)
    print()
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.csv and rows:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(
            {k for r in rows for k in r},
            key=lambda k: list(rows[0]).index(k) if k in rows[0] else 999,
        )
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return 0


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_row(r: dict, backends: list[str]) -> str:
    cells = [str(r["threads"]), f"{r['p']:.0e}", str(r["m"]), str(r["b"]), r["basis"]]
    cells.append(_fmt(r.get("reference_ms"), ".1f"))
    others = [be for be in backends if be != "reference"]
    for be in others:
        cells += [
            _fmt(r.get(f"{be}_ms"), ".1f"),
            _fmt(r.get("ref_over_cpp") if be == "cpp" else None, ".2f"),
            _fmt(r.get(f"{be}_GBs"), ".1f"),
            _fmt(r.get(f"{be}_pct_copy"), ".0f"),
            _fmt(r.get(f"{be}_GFLOPs"), ".1f"),
        ]
    cells += [_fmt(r.get("reference_GBs"), ".1f"), _fmt(r.get("reference_pct_copy"), ".0f")]
    return "| " + " | ".join(cells) + " |"


def render(rows: list[dict], args: argparse.Namespace, copy_bw: dict, skipped: list) -> str:
    import torch

    others = [be for be in args.backends if be != "reference"]
    head = ["threads", "p", "m", "b", "basis", "ref ms"]
    for be in others:
        head += [
            f"{be} ms",
            "ref/cpp" if be == "cpp" else "-",
            f"{be} GB/s",
            f"{be} % copy",
            f"{be} GFLOP/s",
        ]
    head += ["ref GB/s", "ref % copy"]
    lines = [
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, median of {args.repeats}.",
        "Copy bandwidth (read + write, float32 copy_ of "
        f"{args.copy_mb} MB): "
        + ", ".join(f"{t} thread{'s' if t > 1 else ''}: {bw:.1f} GB/s" for t, bw in copy_bw.items())
        + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += [format_row(r, args.backends) for r in rows]
    # bf16/fp16 basis speed-up over the fp32 basis, per backend
    by_key = {(r["threads"], r["p"], r["m"], r["b"], r["basis"]): r for r in rows}
    spd = []
    for (t, p, m, b, basis), r in by_key.items():
        base = by_key.get((t, p, m, b, "fp32"))
        if basis == "fp32" or base is None:
            continue
        for be in args.backends:
            if f"{be}_ms" in r and f"{be}_ms" in base:
                spd.append(
                    f"| {t} | {p:.0e} | {m} | {b} | {be} | {basis} | "
                    f"{base[f'{be}_ms'] / r[f'{be}_ms']:.2f} |"
                )
    if spd:
        lines += [
            "",
            "Low-precision basis speed-up (time with a float32 basis / time with this basis):",
            "",
            "| threads | p | m | b | backend | basis | speed-up |",
            "|---|---|---|---|---|---|---|",
            *spd,
        ]
    if skipped:
        lines += [
            "",
            f"Skipped above --max-bytes={args.max_bytes:.3g}: "
            + ", ".join(f"p={p:.0e} m={m} b={b} {bs}" for p, m, b, bs in skipped),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
