"""Tests of landscape_fast.geometry.sharpness against closed forms and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape_fast.geometry.sharpness import Sharpness, sharpness

D = torch.float64


def _regression(d: int = 5, n: int = 40, seed: int = 0, X: torch.Tensor | None = None):
    """Linear least squares: L(w) = (w - w*)^T A (w - w*) + c with A = X^T X / n, H = 2A."""
    gen = torch.Generator().manual_seed(seed)
    if X is None:
        X = torch.randn(n, d, generator=gen, dtype=D) * torch.linspace(0.5, 2.0, d, dtype=D)
    n, d = X.shape
    y = torch.randn(n, 1, generator=gen, dtype=D)
    model = nn.Linear(d, 1, bias=False).to(D)
    w_star = torch.linalg.lstsq(X, y).solution[:, 0]
    A = X.T @ X / n
    return model, (X, y), w_star, A


def _set(model: nn.Linear, w: torch.Tensor) -> None:
    with torch.no_grad():
        model.weight.copy_(w[None])


def _trust_region_max(g: np.ndarray, A: np.ndarray, rho: float) -> float:
    """max g^T e + e^T A e over ||e|| <= rho (A PSD): e = (mu - 2A)^-1 g, ||e|| = rho."""
    lam, V = np.linalg.eigh(2 * A)
    b = V.T @ g

    def norm(mu: float) -> float:
        return float(np.linalg.norm(b / (mu - lam)))

    lo = np.nextafter(lam[-1], np.inf)  # mu - lam never 0
    hi = lam[-1] + np.linalg.norm(g) / rho + 1.0
    assert norm(lo) > rho > norm(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
    e = V @ (b / (0.5 * (lo + hi) - lam))
    return float(g @ e + e @ A @ e)


def test_quadratic_at_minimum_l2_equals_rho2_lambda_max():
    model, data, w_star, A = _regression()
    _set(model, w_star)
    rho = 0.1
    s = sharpness(model, "mse", data, rho)
    lam_A = float(torch.linalg.eigvalsh(A)[-1])
    assert s.is_lower_bound and s.kind == "worst"
    assert s.value == pytest.approx(rho**2 * lam_A, rel=1e-6)
    assert s.lambda_max == pytest.approx(2 * lam_A, rel=1e-8)  # Hessian = 2A
    assert s.grad_norm < 1e-10
    assert s.taylor == pytest.approx(s.value, rel=1e-6)  # g = 0: Taylor is exact here
    assert "≥" in s.describe() or ">=" in s.describe()
    assert s.settings["n_gradients"] >= 1 and s.settings["n_matvecs"] > 0


def test_quadratic_off_minimum_matches_trust_region():
    model, data, w_star, A = _regression(seed=1)
    gen = torch.Generator().manual_seed(5)
    w = w_star + 0.05 * torch.randn(w_star.shape, generator=gen, dtype=D)
    _set(model, w)
    g = (2 * A @ (w - w_star)).numpy()
    for rho in (0.02, 0.3):
        s = sharpness(model, "mse", data, rho, steps=60)
        exact = _trust_region_max(g, A.numpy(), rho)
        assert s.value == pytest.approx(exact, rel=1e-4)
        assert s.value <= exact * (1 + 1e-10)  # a lower bound
        assert s.grad_norm == pytest.approx(float(np.linalg.norm(g)), rel=1e-8)


def test_average_quadratic_matches_trace_formula():
    model, data, w_star, A = _regression(seed=2)
    _set(model, w_star + 0.1)
    rho = 0.05
    s = sharpness(model, "mse", data, rho, kind="average", num_samples=64, seed=3)
    exact = rho**2 * float(torch.trace(2 * A)) / 2
    assert not s.is_lower_bound and s.stderr is not None and s.stderr > 0
    assert abs(s.value - exact) < 3 * s.stderr
    # The formula itself, with the same draws: the samples are exactly delta^T A delta.
    gen = torch.Generator().manual_seed(3)
    Z = torch.stack([torch.randn(A.shape[0], generator=gen, dtype=D) for _ in range(64)]) * rho
    direct = ((Z @ A) * Z).sum(1)
    assert torch.allclose(s.estimate.samples, direct, rtol=1e-8, atol=1e-14)


def test_linear_loss_refutes_lemma_3_1():
    d, rho = 4, 0.1
    wvec = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=D)
    model = nn.Linear(d, 1, bias=False).to(D)
    data = (wvec, torch.zeros(1, 1, dtype=D))

    def linear_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (out - target).mean()  # L(theta) = w^T theta

    s = sharpness(model, linear_loss, data, rho)
    exact = rho * float(wvec.norm())
    assert s.value == pytest.approx(exact, rel=1e-10)
    assert abs(s.lambda_max) < 1e-10
    assert s.value > rho**2 * s.lambda_max / 2 + 1e-3  # the seed's Lemma 3.1 fails
    assert s.taylor == pytest.approx(exact, rel=1e-10)  # ours holds (exactly, here)
    t = sharpness(model, linear_loss, data, rho, kind="taylor")
    assert t.value == pytest.approx(exact, rel=1e-10) and not t.is_lower_bound
    assert "estimate" in t.validity
    li = sharpness(model, linear_loss, data, rho, norm="linf")
    assert li.value == pytest.approx(rho * float(wvec.abs().sum()), rel=1e-10)


@pytest.mark.parametrize("diagonal", [True, False])
def test_linf_at_minimum_matches_corners(diagonal: bool):
    d, n = 4, 30
    gen = torch.Generator().manual_seed(7)
    if diagonal:
        Q = torch.linalg.qr(torch.randn(n, d, generator=gen, dtype=D)).Q
        X = Q * torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=D) * math.sqrt(n)
    else:
        X = torch.randn(n, d, generator=gen, dtype=D) @ torch.randn(d, d, generator=gen, dtype=D)
    model, data, w_star, A = _regression(X=X)
    _set(model, w_star)
    rho = 0.01
    s = sharpness(model, "mse", data, rho, norm="linf")
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=D) * rho
    brute = float(((corners @ A) * corners).sum(1).max())
    assert s.value == pytest.approx(brute, rel=1e-6)


def _two_layer(alpha: float) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6, bias=False), nn.ReLU(), nn.Linear(6, 2, bias=False))
    net = net.to(D)
    with torch.no_grad():
        net[0].weight.mul_(alpha)
        net[2].weight.div_(alpha)
    return net


def test_dinh_rescaling_adaptive_is_invariant():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(50, 3, generator=gen, dtype=D)
    y = torch.randn(50, 2, generator=gen, dtype=D)
    a, b = _two_layer(1.0), _two_layer(5.0)
    assert torch.allclose(a(X), b(X), atol=1e-12)
    rho = 0.01
    plain = [sharpness(m, "mse", (X, y), rho, steps=10) for m in (a, b)]
    assert plain[1].lambda_max > 3 * plain[0].lambda_max  # lambda_max is not invariant
    exact = [sharpness(m, "mse", (X, y), rho, adaptive=True, eta0=0.0, steps=10) for m in (a, b)]
    assert exact[1].value == pytest.approx(exact[0].value, rel=1e-6)
    assert exact[1].lambda_max == pytest.approx(exact[0].lambda_max, rel=1e-6)
    # eta0 > 0 breaks exact invariance; for a moderate rescaling it stays within ~10 %
    c = _two_layer(2.0)
    ada = [sharpness(m, "mse", (X, y), rho, adaptive=True, steps=10) for m in (a, c)]
    assert ada[1].value == pytest.approx(ada[0].value, rel=0.1)


def test_model_left_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    model(X).sum().backward()
    model[0].bias.grad = None
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    for kind in ("worst", "average", "taylor"):
        s = sharpness(model, "ce", (X, y), 0.05, kind=kind, steps=3, num_samples=4,
                      adaptive=kind == "worst", batch_norm="batch")  # fmt: skip
        assert isinstance(s, Sharpness) and math.isfinite(s.value)
        s.describe()
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": -1.0}, "rho"),
        ({"rho": math.inf}, "rho"),
        ({"rho": math.nan}, "rho"),
        ({"rho": 0.1, "norm": "l1"}, "norm"),
        ({"rho": 0.1, "kind": "max"}, "kind"),
        ({"rho": 0.1, "steps": 0}, "steps"),
        ({"rho": 0.1, "restarts": ("newton",)}, "restarts"),
        ({"rho": 0.1, "kind": "average", "num_samples": 1}, "num_samples"),
        ({"rho": 0.1, "kind": "average", "norm": "linf"}, "l2"),
    ],
)
def test_bad_input(kwargs, match):
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=match):
        sharpness(model, "mse", (torch.randn(4, 2), torch.randn(4, 1)), **kwargs)


def test_average_quartic_matches_its_closed_form():
    # L(θ) = Σ a_i θ_i⁴ (a closure loss): E[L(θ+δ)] − L(θ) = Σ a_i (6 θ_i² ρ² + 3 ρ⁴) for
    # δ ~ N(0, ρ² I), and each antithetic sample is Σ a_i (6 θ_i² δ_i² + δ_i⁴) exactly.
    d, rho = 4, 0.3
    a = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=D)
    theta = torch.tensor([0.2, -0.1, 0.4, 0.0], dtype=D)
    model = nn.Linear(d, 1, bias=False).to(D)
    _set(model, theta)

    def quartic(m: nn.Module, batch) -> torch.Tensor:
        return (a * m.weight[0] ** 4).sum()

    data = [torch.zeros(1, 1, dtype=D)]
    s = sharpness(model, quartic, data, rho, kind="average", num_samples=400, seed=5)
    exact = float((a * (6 * theta**2 * rho**2 + 3 * rho**4)).sum())
    assert abs(s.value - exact) < 3 * s.stderr
    gen = torch.Generator().manual_seed(5)
    Z = torch.stack([torch.randn(d, generator=gen, dtype=D) for _ in range(400)]) * rho
    direct = (a * (6 * theta**2 * Z**2 + Z**4)).sum(1)
    assert torch.allclose(s.estimate.samples, direct, rtol=1e-8, atol=1e-14)
    # Worst case at θ = 0 (H = 0, g = 0): the maximum over the sphere is max_i a_i ρ⁴, on an
    # axis; projected ascent may stop at another axis (a local maximum), so it is a lower bound.
    _set(model, torch.zeros(d, dtype=D))
    w = sharpness(model, quartic, data, rho, steps=60, seed=1)
    assert w.is_lower_bound and float(a.min()) * rho**4 * 0.999 <= w.value <= 3.0 * rho**4 + 1e-15
