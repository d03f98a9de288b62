"""``landscape-fast demo``: train the digits MLP, analyze it, write the HTML report.

The digits MLP (:func:`landscape_fast.zoo.digits_mlp`) is trained with Adam for about
``seconds`` on 80 % of scikit-learn's digits (:func:`landscape_fast.zoo.train`, learning rate
:data:`LR`, batch size :data:`BATCH_SIZE`); then :func:`landscape_fast.analyze.analyze` runs
on the training set at the trained point with that learning rate and batch size (so the
stability and gradient-noise verdicts are about the training that was run), the report goes
to ``out`` (``report.html``, ``plots/``, ``report.json``) and its summary to stdout.

Example (not run by the doctests: it trains and analyzes for several seconds):
    >>> from landscape_fast.demo import run_demo
    >>> code = run_demo(seconds=1.0, out="landscape_report")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

LR = 1e-2
"""The demo's Adam learning rate (that of :func:`landscape_fast.zoo.train`)."""
BATCH_SIZE = 64
"""The demo's mini-batch size."""


def run_demo(
    seconds: float = 3.0,
    seed: int = 0,
    out: str | Path = "landscape_report",
    quiet: bool = False,
) -> int:
    """Train, analyze and report as described above; returns the CLI exit code (0, or 3
    for an incomplete report). Progress lines go to stderr unless ``quiet``."""
    from landscape_fast.cli import analyze_module, finish, progress_printer, write_report
    from landscape_fast.cli_inputs import check_writable
    from landscape_fast.zoo import digits_data, digits_mlp, train

    out_dir = check_writable(out)
    X, y = digits_data()
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(X))
    tr, te = perm[:n_train], perm[n_train:]
    model = digits_mlp(seed=seed)
    fit = train(model, X[tr], y[tr], seconds=seconds, seed=seed, lr=LR, batch_size=BATCH_SIZE)
    model.eval()
    with torch.no_grad():
        acc_tr = (model(X[tr]).argmax(1) == y[tr]).float().mean().item()
        acc_te = (model(X[te]).argmax(1) == y[te]).float().mean().item()
    print(
        f"landscape_fast demo: 64-32-32-10 tanh MLP on scikit-learn digits, trained "
        f"{fit['epochs']} epochs in {fit['seconds']:.1f} s (Adam, lr {LR:g}, batch "
        f"{BATCH_SIZE}): loss {fit['loss']:.3e}, accuracy train {acc_tr:.3f} / test {acc_te:.3f}",
        flush=True,
    )
    report = analyze_module().analyze(
        model,
        "ce",
        (X[tr], y[tr]),
        lr=LR,
        batch_size=BATCH_SIZE,
        seed=seed,
        progress=progress_printer(quiet),
        name="digits MLP 64-32-32-10 (demo)",
    )
    json_path, written = write_report(report, out_dir, html=True)
    return finish(report, json_path, written, as_json=False, quiet=quiet)
