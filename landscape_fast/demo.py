r"""The built-in main job: train the digits MLP, then report what landscape_fast computes.

At this stage of the project it reports the parameter space, the extreme eigenvalues of
the Hessian and the Gauss–Newton matrix of the training loss (:func:`eigsh` over the
curvature operators, with true residuals, after cross-checking the HVP engines), condition
numbers defined for indefinite Hessians and the number of outliers, stochastic
estimates with standard errors (trace and Frobenius norm by Hutch++, the spectral density
by stochastic Lanczos quadrature: negative mass, positive trace, effective dimension), the
full-data gradient and the geometry of the per-batch gradients, whose span is orthonormalized with
:func:`landscape_fast.ops.block_reorth` (the op every eigensolver of the package uses):

.. math::

    \text{diversity} = \frac{\sum_i \lVert g_i \rVert^2}{\lVert \sum_i g_i \rVert^2}
    \quad\text{(Yin et al. 2018)},\qquad
    \operatorname{rank}_\tau [g_1, \dots, g_n] .

Example:
    >>> from landscape_fast.demo import run_demo
    >>> report = run_demo(seconds=0.2, out=lambda *_: None)
    >>> report["params"] > 0 and 0 < report["gradient_rank"] <= report["batches"]
    True
    >>> report["hvp_check_ok"] and report["hessian_top"] >= report["ggn_min"] - 1e-6
    True
    >>> report["trace_stderr"] > 0 and 0 <= report["negative_mass"] <= 1
    True
    >>> report["sharpness_lower_bound"] >= 0 and report["b_simple"] > 0
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from landscape_fast._backend import status
from landscape_fast.ops.block_reorth import block_reorth, selected_backend
from landscape_fast.params import ParamSpace
from landscape_fast.zoo import digits_data, digits_mlp, train


def batch_gradients(
    model: nn.Module, space: ParamSpace, X: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch mean-loss gradients ``(n_batches, p)`` and the batch sizes.

    The model's mode and gradients are left as they were.
    """
    loss_fn = nn.CrossEntropyLoss()
    was_training = model.training
    saved = [p.grad for p in space.params]
    model.eval()
    grads, sizes = [], []
    try:
        for i in range(0, len(X), batch_size):
            for p in space.params:
                p.grad = None
            loss_fn(model(X[i : i + batch_size]), y[i : i + batch_size]).backward()
            grads.append(space.flatten_grad())
            sizes.append(min(batch_size, len(X) - i))
    finally:
        for p, g in zip(space.params, saved):
            p.grad = g
        model.train(was_training)
    return torch.stack(grads), torch.tensor(sizes, dtype=grads[0].dtype)


def span_rank(vectors: torch.Tensor, rank_tol: float, block: int = 8) -> tuple[int, str]:
    """Numerical rank of the rows of ``vectors`` by blockwise ``block_reorth``.

    Returns:
        ``(rank, backend name of the last call)``.
    """
    basis = vectors.new_zeros((0, vectors.shape[1]))
    used = selected_backend(basis, vectors)
    for start in range(0, len(vectors), block):
        out = block_reorth(basis, vectors[start : start + block].contiguous(), rank_tol=rank_tol)
        basis = torch.cat([basis, out.W[~out.deficient]])
    return basis.shape[0], used


def run_demo(seconds: float = 3.0, seed: int = 0, out: Callable[..., None] = print) -> dict:
    """Train the digits MLP for about ``seconds`` and print the report; return it as a dict."""
    torch.manual_seed(seed)
    X, y = digits_data()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=gen)
    n_train = int(0.8 * len(X))
    tr, te = perm[:n_train], perm[n_train:]
    model = digits_mlp(seed=seed)
    space = ParamSpace(model)
    out("landscape_fast demo: 64-32-32-10 tanh MLP on scikit-learn digits")
    out(space.summary())
    fit = train(model, X[tr], y[tr], seconds=seconds, seed=seed)
    model.eval()
    with torch.no_grad():
        acc_tr = (model(X[tr]).argmax(1) == y[tr]).float().mean().item()
        acc_te = (model(X[te]).argmax(1) == y[te]).float().mean().item()
    out(
        f"\ntrained {fit['epochs']} epochs in {fit['seconds']:.1f} s: loss {fit['loss']:.3e}, "
        f"accuracy train {acc_tr:.3f} / test {acc_te:.3f}"
    )

    t0 = time.perf_counter()
    grads, sizes = batch_gradients(model, space, X[tr], y[tr], batch_size=64)
    weights = sizes / sizes.sum()
    full_grad = (weights[:, None] * grads).sum(0)  # sample-weighted mean over batches
    weighted = grads * sizes[:, None]
    diversity = (weighted.norm(dim=1) ** 2).sum() / (weighted.sum(0).norm() ** 2)
    rank, backend = span_rank(grads, rank_tol=1e-3)
    elapsed = time.perf_counter() - t0
    report = {
        "params": space.numel,
        "layers": len(space.layers()),
        "train_accuracy": acc_tr,
        "test_accuracy": acc_te,
        "gradient_norm": full_grad.norm().item(),
        "batches": len(grads),
        "gradient_diversity": diversity.item(),
        "gradient_rank": rank,
        "block_reorth_backend": backend,
    }
    out("\ngradient geometry at the trained point (training set):")
    out(f"  |grad L|                          {report['gradient_norm']:.4e}")
    out(f"  per-batch gradients               {len(grads)} batches of <= 64 samples")
    out(f"  gradient diversity                {report['gradient_diversity']:.3f}")
    out(f"  rank of their span (tol 1e-3)     {rank} of {len(grads)}  [block_reorth: {backend}]")
    out(f"  time                              {elapsed:.2f} s")
    report.update(hessian_extremes(model, X[tr], y[tr], out=out))
    report.update(hessian_estimates(model, X[tr], y[tr], seed=seed, out=out))
    report.update(geometry_summary(model, X[tr], y[tr], seed=seed, out=out))
    usable = [name for name, why in status().items() if why is None]
    out(f"\nbackends usable here: {', '.join(usable)}  (python -m landscape_fast.info)")
    out("Coming next: one-call analysis, HTML reports, PAC-Bayes in the demo (see README).")
    return report


def hessian_extremes(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    tol: float = 1e-3,
    out: Callable[..., None] = print,
) -> dict:
    r"""Top and bottom Hessian and GGN eigenvalues (:func:`eigsh`), with true residuals,
    after cross-checking the HVP engines (:func:`check_hvp`); condition numbers that are
    defined for an indefinite Hessian (:func:`condition_numbers`) and the outlier count."""
    from landscape_fast.linalg import condition_numbers, count_outliers, eigsh
    from landscape_fast.operators import GGN, Hessian, check_hvp

    t0 = time.perf_counter()
    check = check_hvp(model, "ce", (X[:256], y[:256]))
    out(f"\nHVP engines cross-checked on 256 samples: {'ok' if check.ok else 'DISAGREE'}")
    results: dict = {"hvp_check_ok": check.ok}
    for name, cls in (("Hessian", Hessian), ("GGN", GGN)):
        op = cls(model, "ce", (X, y), batch_size=512)
        top = eigsh(op, k=12, which="LA", tol=tol)
        bottom = eigsh(op, k=1, which="SA", tol=tol)
        engine = getattr(op, "engine", None) or "Jᵀ H_ℓ J"
        out(
            f"{name} of the training loss ({op.shape[0]} parameters, engine {engine}, "
            f"tol {tol:g}, {top.n_matvecs + bottom.n_matvecs} products):"
        )
        for j in range(3):
            out(
                f"  λ{j + 1:<3d} {float(top.eigenvalues[j]): .5e}   residual "
                f"{float(top.residuals[j]):.1e}   converged {bool(top.converged[j])}"
            )
        lmin = float(bottom.eigenvalues[0])
        out(
            f"  λmin {lmin: .5e}   residual {float(bottom.residuals[0]):.1e}   "
            f"converged {bool(bottom.converged[0])}"
        )
        c = condition_numbers(top.eigenvalues, lambda_min=lmin, ks=(10,))
        outliers = count_outliers(top.eigenvalues)
        kappa = f"{c.kappa[10]:.1f}" if 10 in c.kappa else "n/a"
        out(
            f"  outliers above the bulk: {outliers};  κ_10 = λ1/λ10 = {kappa};  "
            f"|λmin|/λmax = {c.negative_ratio:.2e}"
        )
        results[f"{name.lower()}_top"] = float(top.eigenvalues[0])
        results[f"{name.lower()}_min"] = lmin
    out(f"  time {time.perf_counter() - t0:.2f} s")
    return results


def hessian_estimates(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    seed: int = 0,
    out: Callable[..., None] = print,
) -> dict:
    r"""Trace and :math:`\lVert H\rVert_F^2` (Hutch++, 1 % relative standard error) and the
    SLQ spectral density (8 probes × 80 steps, as one block) of the training-loss Hessian."""
    from landscape_fast.linalg import effective_dimension, frobenius_norm_sq, spectral_density
    from landscape_fast.linalg import trace as hutch_trace
    from landscape_fast.operators import Hessian

    t0 = time.perf_counter()
    H = Hessian(model, "ce", (X, y), batch_size=512)
    tr = hutch_trace(H, "hutch++", rtol=1e-2, seed=seed)
    fro = frobenius_norm_sq(H, "hutch++", rtol=1e-2, seed=seed)
    d = spectral_density(H, num_probes=8, num_steps=80, seed=seed)
    pos = d.trace_of(lambda t: t.clamp(min=0), quantity="tr H+")
    neg = d.negative_mass()
    z = 1e-2 * max(float(d.scale), 1e-12)
    neff = effective_dimension(d, z)
    out("\nstochastic estimates (± one standard error over the probes):")
    out(f"  tr H          {tr.value: .4e} ± {tr.stderr:.1e}   Hutch++, {tr.n_matvecs} products")
    out(f"  ‖H‖_F²        {fro.value: .4e} ± {fro.stderr:.1e}   Hutch++, {fro.n_matvecs} products")
    out(f"  tr H₊         {pos.value: .4e} ± {pos.stderr:.1e}   SLQ 8 × 80, {d.n_matvecs} products")
    out(f"  negative mass {neg.value: .4f} ± {neg.stderr:.4f}   share below -1e-4·max|λ|")
    out(f"  N_eff(z={z:.1e}) {neff.value:.1f} ± {neff.stderr:.1f}   Σ λ/(λ+z) over λ > 0")
    out(f"  time {time.perf_counter() - t0:.2f} s")
    return {
        "trace": float(tr.value),
        "trace_stderr": float(tr.stderr),
        "frobenius_norm_sq": float(fro.value),
        "negative_mass": float(neg.value),
        "effective_dimension": float(neff.value),
    }


def geometry_summary(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float = 1e-2,
    batch_size: int = 64,
    rho: float = 0.05,
    seed: int = 0,
    out: Callable[..., None] = print,
) -> dict:
    """Worst-case and average sharpness, gradient noise scales and linear stability at the
    training learning rate and batch size, each as its one-line ``describe()``."""
    from landscape_fast.geometry import gradient_noise, sharpness, stability

    t0 = time.perf_counter()
    worst = sharpness(model, "ce", (X, y), rho, seed=seed)
    average = sharpness(model, "ce", (X, y), rho, kind="average", seed=seed)
    noise = gradient_noise(model, "ce", (X, y), lr=lr, batch_size=batch_size, seed=seed)
    stab = stability(model, lr, batch_size, loss_fn="ce", data=(X, y), seed=seed)
    out(f"\ngeometry (ρ = {rho}, η = {lr}, B = {batch_size}):")
    for r in (worst, average, noise, stab):
        out(f"  {r.describe()}")
    out(f"  time {time.perf_counter() - t0:.2f} s")
    return {
        "sharpness_lower_bound": float(worst.value),
        "average_sharpness": float(average.value),
        "b_simple": float(noise.b_simple),
        "gd_stable": bool(stab.gd_stable),
    }
