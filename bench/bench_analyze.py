"""``lf.analyze`` end to end: time, products and what each quantity cost, per workload.

Workloads (built-in zoo, trained first for ``--train-seconds`` with Adam):

- ``digits_mlp``: the digits MLP on all 1797 samples, no budget (the demo's job);
- ``resnet20``: ResNet-20 with BatchNorm on ``--resnet-samples`` (default 2048) synthetic
  CIFAR-shaped images, under a ``--resnet-budget`` seconds budget (issue 7 target: the
  default quantities within 15 minutes on 2 CPU cores).

Each row is one run (these runs are minutes long); the table lists every quantity's
seconds and Hessian-vector products and what the budget skipped or cut.

Run::

    OMP_NUM_THREADS=2 python bench/bench_analyze.py --out bench/results/analyze_cpu.md

Smoke run: ``python bench/bench_analyze.py --tiny``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import landscape_fast as lf  # noqa: E402
from landscape_fast import zoo  # noqa: E402


def _workload(name: str, tiny: bool, resnet_samples: int) -> tuple:
    if name == "digits_mlp":
        X, y = zoo.digits_data()
        model = zoo.digits_mlp(hidden=8 if tiny else 32)
        return model, (X[:128], y[:128]) if tiny else (X, y)
    model = zoo.resnet20(width=4, depth=8) if tiny else zoo.resnet20()
    n = 32 if tiny else resnet_samples
    return model, zoo.cifar_like_data(n=n, size=8 if tiny else 32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="digits_mlp,resnet20")
    ap.add_argument("--train-seconds", type=float, default=3.0)
    ap.add_argument("--resnet-samples", type=int, default=2048)
    ap.add_argument("--resnet-budget", type=float, default=840.0, help="seconds")
    ap.add_argument("--tiny", action="store_true", help="small problems (smoke test)")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    args = ap.parse_args(argv)

    lines = [
        f"lf.analyze, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s). Command: `python bench/bench_analyze.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
        "",
    ]
    for name in args.workloads.split(","):
        model, (X, y) = _workload(name, args.tiny, args.resnet_samples)
        init = copy.deepcopy(model.state_dict())
        fit = zoo.train(model, X, y, seconds=0.5 if args.tiny else args.train_seconds)
        budget = None
        if name == "resnet20":
            budget = 6.0 if args.tiny else args.resnet_budget
        report = lf.analyze(
            model, "ce", (X, y), lr=0.01, batch_size=min(64, len(X) // 2), init_params=init,
            budget=budget,
            seed=0, name=name, progress=True,
        )  # fmt: skip
        d = report.data
        lines += [
            f"### {name}: p = {d['model']['params']:,}, N = {d['model']['samples']:,}, "
            f"trained {fit['epochs']} epochs (loss {fit['loss']:.3g}), budget "
            f"{'none' if budget is None else f'{budget:g} s'}",
            "",
            f"Total **{d['total_seconds']:.1f} s**, {d['total_matvecs']:,} Hessian-vector "
            f"products; one full-data gradient {d['gradient_seconds']:.3g} s, one HVP "
            f"{d['hvp_seconds']:.3g} s; complete: {d['complete']}.",
            "",
            "| quantity | seconds | matvecs | result |",
            "|---|---|---|---|",
        ]
        for q, sec in d["quantities"].items():
            text = sec.get("describe") or sec.get("worst", {}).get("describe", "")
            text = text.replace("|", "\\|")
            lines.append(f"| {q} | {sec['seconds']:.2f} | {sec['n_matvecs']:,} | {text} |")
        for s in d["skipped"]:
            lines.append(f"| {s['quantity']} | – | – | skipped: {s['reason']} |")
        lines.append("")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
