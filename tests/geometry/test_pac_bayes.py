"""Tests of ``landscape_fast.geometry.pac_bayes`` (PAC-Bayes-kl bound, Jiang flatness)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_fast.geometry.pac_bayes import (
    DEFAULT_GRID_J,
    PacBayesBound,
    PacBayesFlatness,
    document_theorem_2_2_invalid,
    kl_bernoulli,
    kl_inverse_upper,
    pac_bayes_bound,
    pac_bayes_flatness,
    sigma_grid,
    union_delta,
    zero_one_error,
)


# ---------------------------------------------------------------------- kl and kl^-1
def _kl_np(q: float, p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(q > 0, q * np.log(q / p), 0.0)
        b = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - p)), 0.0)
    return a + b


@pytest.mark.parametrize("q", [0.0, 1e-4, 0.05, 0.3, 0.5, 0.77, 0.999, 1.0])
@pytest.mark.parametrize("c", [0.0, 1e-6, 1e-3, 0.05, 0.7, 5.0])
def test_kl_inverse_against_brute_force(q: float, c: float) -> None:
    p = kl_inverse_upper(q, c)
    assert q <= p <= 1.0
    # p is the upper end of the final bracket: just below it kl is within c
    assert p == 1.0 or kl_bernoulli(q, max(q, p - 2e-12)) <= c * (1 + 1e-9) + 1e-12
    grid = np.linspace(q, 1.0, 200_001)
    ok = grid[_kl_np(q, np.clip(grid, 1e-300, 1.0)) <= c]
    brute = ok.max()
    step = (1.0 - q) / 200_000
    assert abs(p - brute) <= step + 1e-12
    if 0.0 < c and q < 1.0 and p < 1.0 - 1e-6:  # (kl is too steep near p = 1 to compare)
        assert kl_bernoulli(q, p) == pytest.approx(c, rel=1e-6, abs=1e-10)


def test_kl_known_values_and_edges() -> None:
    assert kl_bernoulli(0.3, 0.3) == 0.0
    assert kl_bernoulli(0.0, 0.5) == pytest.approx(math.log(2))
    assert kl_bernoulli(1.0, 0.5) == pytest.approx(math.log(2))
    assert kl_bernoulli(0.5, 0.0) == math.inf and kl_bernoulli(0.5, 1.0) == math.inf
    assert kl_bernoulli(0.0, 0.0) == 0.0 and kl_bernoulli(1.0, 1.0) == 0.0
    assert kl_inverse_upper(0.0, math.log(2)) == pytest.approx(0.5, abs=1e-15)
    assert kl_inverse_upper(0.0, 0.0) == 0.0
    assert kl_inverse_upper(0.42, 0.0) == 0.42
    assert kl_inverse_upper(1.0, 10.0) == 1.0
    assert kl_inverse_upper(0.2, math.inf) == 1.0
    # monotone in c and in q
    ps = [kl_inverse_upper(0.1, c) for c in (0.001, 0.01, 0.1, 1.0)]
    assert ps == sorted(ps)
    qs = [kl_inverse_upper(q, 0.05) for q in (0.0, 0.1, 0.2, 0.5)]
    assert qs == sorted(qs)
    # Pinsker: kl^-1(q, c) <= q + sqrt(c/2)
    for q in (0.0, 0.1, 0.5, 0.9):
        for c in (0.001, 0.05, 0.3):
            assert kl_inverse_upper(q, c) <= q + math.sqrt(c / 2) + 1e-12
    with pytest.raises(ValueError):
        kl_inverse_upper(1.5, 0.1)
    with pytest.raises(ValueError):
        kl_inverse_upper(0.5, -0.1)
    with pytest.raises(ValueError):
        kl_inverse_upper(0.5, float("nan"))


def test_grid_and_union_bound() -> None:
    assert sigma_grid(1) == pytest.approx(math.sqrt(0.1 * math.exp(-0.01)))
    assert sum(union_delta(0.05, j) for j in range(1, 200_000)) == pytest.approx(0.05, rel=1e-4)
    assert len(set(DEFAULT_GRID_J)) == len(DEFAULT_GRID_J) and min(DEFAULT_GRID_J) >= 1
    with pytest.raises(ValueError):
        sigma_grid(0)


def test_zero_one_error_forms() -> None:
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert zero_one_error(out, torch.tensor([0, 1, 1])).tolist() == [0.0, 0.0, 1.0]
    onehot = F.one_hot(torch.tensor([0, 0, 0]), 2).float()
    assert zero_one_error(out, onehot).tolist() == [0.0, 1.0, 0.0]
    assert zero_one_error(torch.tensor([0.5, -1.0]), torch.tensor([1, 1])).tolist() == [0.0, 1.0]


# ---------------------------------------------------------------------- fixtures
def _mlp(d: int, h: int, c: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()


def _error(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(zero_one_error(model(X), y).mean())


def _stochastic_error(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, sigma: float, draws: int
) -> float:
    """Monte-Carlo error of Q = N(theta, sigma^2 I) on (X, y) (on a copy of the model)."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(123)
    base = [p.detach().clone() for p in m.parameters()]
    acc = 0.0
    with torch.no_grad():
        for _ in range(draws):
            for p, b in zip(m.parameters(), base):
                p.copy_(b + sigma * torch.randn(b.shape, generator=g))
            acc += _error(m, X, y)
    return acc / draws


# ---------------------------------------------------------------------- the bound
def test_random_labels_bound_is_valid_and_doc_theorem_is_violated() -> None:
    C, d, n = 10, 10, 200
    g = torch.Generator().manual_seed(0)
    X, Xt = torch.randn(n, d, generator=g), torch.randn(2000, d, generator=g)
    y, yt = torch.randint(0, C, (n,), generator=g), torch.randint(0, C, (2000,), generator=g)
    model = _mlp(d, 64, C, seed=0)
    init = copy.deepcopy(model)
    _train(model, X, y, steps=300, lr=1e-2)
    train_err, test_err = _error(model, X, y), _error(model, Xt, yt)
    assert train_err < 0.1 and test_err > 0.8  # memorized random labels

    r = pac_bayes_bound(model, "ce", (X, y), init, mc_samples=20, seed=0)
    assert isinstance(r, PacBayesBound)
    assert r.n == n and r.num_params == sum(p.numel() for p in model.parameters())
    assert r.confidence == pytest.approx(0.94)
    assert test_err <= r.bound <= 1.0
    q_test = _stochastic_error(model, Xt, yt, r.sigma, draws=10)
    assert q_test <= r.bound  # the bound is on Q's error
    assert r.mcallester >= r.bound - 1e-12  # kl-inverse is tighter than Pinsker
    assert r.bound == min(row.bound for row in r.rows)
    assert "sigma=" in r.describe() and "\n" not in r.describe()
    # the seed document's "Theorem 2.2" is violated: its RHS is below the actual gap
    rhs = document_theorem_2_2_invalid(rho=0.01, num_params=r.num_params, n=n, delta=0.05)
    assert rhs < test_err - train_err


def test_true_labels_easy_task_bound_not_vacuous() -> None:
    d, n = 5, 200
    g = torch.Generator().manual_seed(1)
    w = torch.randn(d, generator=g)
    X, Xt = torch.randn(n, d, generator=g), torch.randn(2000, d, generator=g)
    y, yt = (X @ w > 0).long(), (Xt @ w > 0).long()
    torch.manual_seed(1)
    model = nn.Linear(d, 2)
    init = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # short training: stays near θ₀
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    test_err = _error(model, Xt, yt)
    # M = 400 draws: with few draws the Monte-Carlo certificate alone exceeds 0.5
    r = pac_bayes_bound(model, "ce", (X, y), init, mc_samples=400, seed=0)
    assert r.bound >= test_err
    assert r.bound >= _stochastic_error(model, Xt, yt, r.sigma, draws=10)
    assert r.bound < 0.5 and not r.vacuous, r.describe()


def test_kl_formula_and_union_bound_at_init() -> None:
    """θ = θ₀ ⇒ KL = 0, and each row is kl⁻¹(kl⁻¹(ê_M, ln(2/δ'_j)/M), ln(2√n/δ_j)/n)."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(50, 3, generator=g)
    y = torch.randint(0, 2, (50,), generator=g)
    model = _mlp(3, 8, 2, seed=2)
    sigmas = [0.3, 0.1, 0.01]
    for init in (
        copy.deepcopy(model),
        model.state_dict(),
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
    ):
        r = pac_bayes_bound(model, "ce", (X, y), init, sigmas=sigmas, mc_samples=8, seed=3)
        assert r.kl == 0.0 and r.distance == 0.0
        for k, row in enumerate(r.rows, start=1):
            assert row.kl == 0.0 and row.sigma == sigmas[k - 1]
            assert row.delta_j == pytest.approx(6 * 0.05 / (math.pi**2 * k**2))
            assert row.delta_mc_j == pytest.approx(6 * 0.01 / (math.pi**2 * k**2))
            up = kl_inverse_upper(row.mc_error, math.log(2 / row.delta_mc_j) / 8)
            assert row.mc_error_upper == up
            rhs = math.log(2 * math.sqrt(50) / row.delta_j) / 50
            assert row.bound == kl_inverse_upper(up, rhs)
            assert row.mcallester == pytest.approx(up + math.sqrt(rhs / 2))
    # KL = ||θ − θ₀||² / (2σ²) after a known shift
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[0].bias.add_(torch.tensor([0.3, 0.0, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0]))
    r = pac_bayes_bound(shifted, "ce", (X, y), model, sigmas=[0.5], mc_samples=4)
    assert r.distance == pytest.approx(0.5, rel=1e-6)
    assert r.kl == pytest.approx(0.25 / (2 * 0.25), rel=1e-6)
    # seeded: same result twice
    r2 = pac_bayes_bound(shifted, "ce", (X, y), model, sigmas=[0.5], mc_samples=4)
    assert r2.rows == r.rows


def test_errors_and_model_unchanged() -> None:
    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 3, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    model.train()
    model(X).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    init = copy.deepcopy(model)

    with pytest.raises(ValueError, match="selected parameters"):
        pac_bayes_bound(model, "ce", (X, y), torch.zeros(7))
    with pytest.raises(ValueError, match="lacks"):
        pac_bayes_bound(model, "ce", (X, y), {"0.weight": torch.zeros(6, 3)})
    wrong = dict(model.state_dict())
    wrong["1.weight"] = torch.ones(5)
    with pytest.raises(ValueError, match="shapes differ"):
        pac_bayes_bound(model, "ce", (X, y), wrong)
    with pytest.raises(ValueError, match="init_params lacks"):  # another architecture
        pac_bayes_bound(model, "ce", (X, y), _mlp(3, 5, 3, seed=0))

    def ce_per_sample(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    with pytest.raises(ValueError, match=r"outside \[0, 1\].*0-1 error"):
        pac_bayes_bound(model, "ce", (X, y), init, error_fn=ce_per_sample, mc_samples=2)
    with pytest.raises(ValueError, match="empty"):
        pac_bayes_bound(model, "ce", (X[:0], y[:0]), init)
    with pytest.raises(ValueError, match="delta"):
        pac_bayes_bound(model, "ce", (X, y), init, delta=0.0)

    r = pac_bayes_bound(model, "ce", (X, y), init, mc_samples=3, sigmas=[0.1, 0.01])
    assert r.kl == 0.0
    assert any("small" in note for note in r.notes)  # n = 30 cannot certify much
    f = pac_bayes_flatness(model, "ce", (X, y), mc_samples=2, iterations=5)
    assert f.sigma > 0
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, gr in zip(model.parameters(), grads):
        assert torch.equal(p.grad, gr)


# ---------------------------------------------------------------------- Jiang flatness
def _least_squares(scale: float) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    X = torch.randn(40, 4, generator=g, dtype=torch.float64) * scale
    w = torch.randn(1, 4, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w / scale)  # exact fit: zero residual
    return model, X, X @ (w / scale).T


def _sq_error(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (out - t).square().reshape(-1)


def test_jiang_flatness_sharper_gives_smaller_sigma() -> None:
    res = {}
    for s in (1.0, 3.0):
        model, X, y = _least_squares(s)
        res[s] = pac_bayes_flatness(
            model,
            "mse",
            (X, y),
            error_fn=_sq_error,
            target_deviation=0.1,
            mc_samples=10,
            iterations=40,
        )
    flat, sharp = res[1.0], res[3.0]
    assert isinstance(flat, PacBayesFlatness)
    assert flat.bracketed and sharp.bracketed
    assert sharp.sigma < flat.sigma
    # zero residual: deviation = sigma² · mean (x·ξ)², so σ' scales exactly as 1/scale
    assert sharp.sigma / flat.sigma == pytest.approx(1 / 3, rel=1e-6)
    assert sharp.flatness == pytest.approx(9 * flat.flatness, rel=1e-5)
    assert flat.perturbed_error - flat.base_error <= 0.1
    assert "not a bound" in flat.describe()
    mag = pac_bayes_flatness(
        *_least_squares(1.0)[:1],
        "mse",
        _least_squares(1.0)[1:],
        error_fn=_sq_error,
        magnitude_aware=True,
        mc_samples=10,
    )
    assert mag.magnitude_aware and mag.bracketed and mag.sigma > 0


def test_jiang_flatness_classification_and_range_notes() -> None:
    g = torch.Generator().manual_seed(6)
    X = torch.randn(100, 2, generator=g)
    y = (X[:, 0] > 0).long()
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-3.0, 0.0], [3.0, 0.0]]))
        model.bias.zero_()
    r = pac_bayes_flatness(model, "ce", (X, y), mc_samples=10)
    assert r.bracketed and r.perturbed_error - r.base_error <= 0.1
    high = pac_bayes_flatness(model, "ce", (X, y), mc_samples=4, sigma_range=(1e-6, 1e-4))
    assert not high.bracketed and any("above" in note for note in high.notes)
