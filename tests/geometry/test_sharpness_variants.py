"""m-sharpness, Keskar ε-sharpness and the corrected Lemma 3.1/3.2 fields of ``sharpness``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape_fast.geometry.sharpness import sharpness
from tests.geometry.test_sharpness import D, _regression, _set, _trust_region_max


def _batch_exact(X, y, w, idx, rho):
    """Exact worst case of the batch loss mean((X_B w - y_B)^2): a trust-region problem."""
    Xb, yb = X[idx].numpy(), y[idx].numpy()[:, 0]
    m = Xb.shape[0]
    A = Xb.T @ Xb / m
    g = 2 * Xb.T @ (Xb @ w.numpy() - yb) / m
    return _trust_region_max(g, A, rho)


@pytest.mark.parametrize("n, m, max_batches", [(40, 10, None), (43, 10, None), (40, 8, 3)])
def test_m_sharpness_matches_per_batch_trust_region(n, m, max_batches):
    model, (X, y), w_star, A = _regression(d=3, n=n, seed=4)
    gen = torch.Generator().manual_seed(1)
    w = w_star + 0.05 * torch.randn(w_star.shape, generator=gen, dtype=D)
    _set(model, w)
    rho, seed = 0.1, 3
    s = sharpness(model, "mse", (X, y), rho, m=m, max_batches=max_batches, steps=60, seed=seed)
    # the documented batching: seeded randperm, full batches only, then a seeded subsample
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    k = n // m
    chosen = (
        range(k)
        if max_batches is None
        else sorted(torch.randperm(k, generator=g)[:max_batches].tolist())
    )
    exact = [_batch_exact(X, y, w, perm[i * m : (i + 1) * m], rho) for i in chosen]
    assert s.is_lower_bound and s.m == m and s.kind == "worst"
    assert s.settings["n_batches"] == len(exact)
    assert s.settings["n_dropped"] == n - k * m
    assert s.estimate is not None and s.estimate.samples.numel() == len(exact)
    assert s.estimate.samples.numpy() == pytest.approx(exact, rel=1e-4)
    assert s.value == pytest.approx(float(np.mean(exact)), rel=1e-4)
    assert s.value <= float(np.mean(exact)) * (1 + 1e-10)  # a lower bound
    assert s.stderr == pytest.approx(float(np.std(exact, ddof=1) / math.sqrt(len(exact))), rel=1e-3)
    assert "m-sharpness" in s.describe()
    assert s.lemma_3_2_lower is None  # full-data lemma fields only for the plain worst case


def test_m_equal_n_is_plain_worst_case():
    model, data, w_star, A = _regression(d=4, n=30, seed=2)
    _set(model, w_star + 0.03)
    plain = sharpness(model, "mse", data, 0.2, steps=30)
    mN = sharpness(model, "mse", data, 0.2, m=30, steps=30)
    assert mN.settings["n_batches"] == 1 and math.isnan(mN.stderr)
    assert mN.value == pytest.approx(plain.value, rel=1e-8)
    assert mN.loss == plain.loss and mN.grad_norm == plain.grad_norm  # full-data companions


def _box_brute(g: np.ndarray, A: np.ndarray, r: np.ndarray) -> float:
    """max g^T y + y^T A y over the box |y_i| <= r_i: a convex function peaks at a corner."""
    corners = np.array(list(itertools.product([-1.0, 1.0], repeat=len(r)))) * r
    return float((corners @ g + ((corners @ A) * corners).sum(1)).max())


@pytest.mark.parametrize("at_minimum", [True, False])
def test_keskar_matches_box_corners(at_minimum: bool):
    d, n = 4, 30
    gen = torch.Generator().manual_seed(7)
    Q = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=D)).Q
    X = Q * torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=D) * math.sqrt(n)  # A diagonal
    model, data, w_star, A = _regression(X=X)
    w = w_star if at_minimum else w_star + torch.tensor([0.3, -0.2, 0.1, 0.05], dtype=D)
    _set(model, w)
    eps = 1e-2
    s = sharpness(model, "mse", data, kind="keskar", epsilon=eps)
    r = (eps * (w.abs() + 1)).numpy()
    g = (2 * A @ (w - w_star)).numpy()
    brute = _box_brute(g, A.numpy(), r)
    with torch.no_grad():
        loss = float(nn.functional.mse_loss(model(data[0]), data[1]))
    assert s.kind == "keskar" and s.is_lower_bound and s.rho == eps and s.norm == "linf"
    assert s.loss == pytest.approx(loss, rel=1e-12)
    assert s.settings["max_increase"] == pytest.approx(brute, rel=1e-8)
    assert s.value == pytest.approx(100 * brute / (1 + loss), rel=1e-8)
    assert "Keskar" in s.describe() and any("L-BFGS-B" in x for x in s.notes)


def test_keskar_non_diagonal_is_a_lower_bound_close_to_brute():
    d = 3
    gen = torch.Generator().manual_seed(11)
    X = torch.randn(25, d, generator=gen, dtype=D) @ torch.randn(d, d, generator=gen, dtype=D)
    model, data, w_star, A = _regression(X=X)
    w = w_star + 0.2
    _set(model, w)
    eps = 5e-2
    s = sharpness(model, "mse", data, kind="keskar", epsilon=eps, steps=40)
    brute = _box_brute((2 * A @ (w - w_star)).numpy(), A.numpy(), (eps * (w.abs() + 1)).numpy())
    assert s.settings["max_increase"] <= brute * (1 + 1e-10)
    assert s.settings["max_increase"] == pytest.approx(brute, rel=1e-6)


def test_lemma_fields_on_quadratic():
    model, data, w_star, A = _regression(seed=1)
    lam_A, V = torch.linalg.eigh(A)
    rho = 0.1
    _set(model, w_star)  # at the minimum: L(θ±ρq1) - L(θ) = ρ² λ_max(A) = ρ² λ_max(H)/2
    s = sharpness(model, "mse", data, rho)
    assert s.lemma_3_2_lower == pytest.approx(rho**2 * float(lam_A[-1]), rel=1e-8)
    assert s.lemma_3_1_upper_at_theta == pytest.approx(rho**2 * float(lam_A[-1]), rel=1e-8)
    assert "L3.2" in s.describe()
    # off the minimum: ρ|g·q1| + ρ² λ_max(A); H is constant so the at-θ upper bound is valid
    gen = torch.Generator().manual_seed(5)
    w = w_star + 0.05 * torch.randn(w_star.shape, generator=gen, dtype=D)
    _set(model, w)
    g = 2 * A @ (w - w_star)
    s = sharpness(model, "mse", data, rho, steps=60)
    q1 = V[:, -1]
    lower = rho * abs(float(g @ q1)) + rho**2 * float(lam_A[-1])
    exact = _trust_region_max(g.numpy(), A.numpy(), rho)
    assert s.lemma_3_2_lower == pytest.approx(lower, rel=1e-8)
    assert s.lemma_3_2_lower <= s.value <= exact * (1 + 1e-10) <= s.lemma_3_1_upper_at_theta
    # without the eigenvector restart the ±ρq1 points are evaluated separately
    s2 = sharpness(model, "mse", data, rho, restarts=("gradient",))
    assert s2.lemma_3_2_lower == pytest.approx(lower, rel=1e-8)
    # only for the plain l2 non-adaptive worst case
    for kw in ({"norm": "linf"}, {"adaptive": True}, {"kind": "average", "num_samples": 2}):
        assert sharpness(model, "mse", data, rho, steps=2, **kw).lemma_3_2_lower is None


def test_lemma_fields_on_linear_loss():
    rho = 0.1
    wvec = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=D)
    model = nn.Linear(4, 1, bias=False).to(D)

    def linear_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (out - target).mean()

    s = sharpness(model, linear_loss, (wvec, torch.zeros(1, 1, dtype=D)), rho)
    # H = 0, so q1 is arbitrary: max(±ρ w·q1) = ρ|w·q1| ∈ [0, ρ||w||]; upper = ρ||w|| exactly
    assert 0.0 <= s.lemma_3_2_lower <= s.value + 1e-12
    assert s.lemma_3_1_upper_at_theta == pytest.approx(rho * float(wvec.norm()), rel=1e-10)
    assert s.value == pytest.approx(s.lemma_3_1_upper_at_theta, rel=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": 0.1, "m": 0}, "m must"),
        ({"rho": 0.1, "m": 5}, "m must be <="),
        ({"rho": 0.1, "m": 2, "kind": "average"}, "kind='worst'"),
        ({"rho": 0.1, "m": 2, "max_batches": 0}, "max_batches"),
        ({"kind": "keskar", "epsilon": 0.0}, "epsilon"),
        ({"kind": "keskar", "epsilon": -1e-3}, "epsilon"),
        ({"kind": "keskar", "epsilon": math.nan}, "epsilon"),
        ({"kind": "keskar", "rho": 0.1}, "epsilon"),
        ({"kind": "keskar", "norm": "l2"}, "own box"),
        ({"kind": "keskar", "adaptive": True}, "own box"),
        ({}, "rho"),
    ],
)
def test_bad_input(kwargs, match):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=match):
        sharpness(model, "mse", (torch.randn(4, 2), torch.randn(4, 1)), **kwargs)


def test_m_needs_a_pair():
    model = nn.Linear(2, 1)
    batches = [(torch.randn(4, 2), torch.randn(4, 1))] * 2
    with pytest.raises(ValueError, match="inputs, targets"):
        sharpness(model, "mse", batches, 0.1, m=2)


def test_variants_leave_model_unchanged_and_run_on_a_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    model.train()
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [
        {"rho": 0.05, "m": 4, "adaptive": True, "norm": "linf", "max_batches": 3},
        {"rho": 0.05, "m": 8, "batch_norm": "batch"},
        {"kind": "keskar", "epsilon": 1e-3},
    ]
    for kw in runs:
        s = sharpness(model, "ce", (X, y), steps=3, **kw)
        assert math.isfinite(s.value) and s.value >= 0 and s.is_lower_bound
        s.describe()
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
