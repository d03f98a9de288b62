"""Tests of ``landscape_fast.geometry.stability`` (Wu, Ma & E 2018 linear stability)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import autograd, nn

import landscape_fast as lf
from landscape_fast.geometry.stability import (
    NonUniformityOperator,
    Stability,
    per_sample_hvp,
    stability,
)

DT = torch.float64


# ---------------------------------------------------------------------- fixtures
def _linreg(n: int = 12, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT) * torch.tensor([2.0, 1.0, 0.7, 0.3], dtype=DT)
    y = torch.randn(n, 1, generator=g, dtype=DT)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=DT))
    return model, X, y


def _linreg_closed_form(X: torch.Tensor):
    """ℓ_i = (x_iᵀθ − y_i)² ⇒ H_i = 2 x_i x_iᵀ; a = λ_max(H), s² = λ_max(mean H_i² − H²)."""
    Hi = 2.0 * torch.einsum("ni,nj->nij", X, X)
    H = Hi.mean(0)
    M = (Hi @ Hi).mean(0) - H @ H
    a = torch.linalg.eigvalsh(H)[-1].item()
    s2 = torch.linalg.eigvalsh((M + M.T) / 2)[-1].item()
    v = torch.linalg.eigh(H).eigenvectors[:, -1]
    lb = ((Hi @ v).square().sum(1).mean() - a**2).item()
    return a, s2, lb


def _mlp(seed: int = 0, n: int = 10):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X = torch.randn(n, 3, dtype=DT)
    y = torch.randint(0, 3, (n,))
    return model, X, y


def _factor(n: int, B: int) -> float:
    return (n - B) / (B * (n - 1))


# ---------------------------------------------------------------------- closed form
def test_linear_regression_exact_matches_closed_form() -> None:
    model, X, y = _linreg()
    n, B = X.shape[0], 3
    a, s2, lb = _linreg_closed_form(X)
    for lr in (0.3 / a, 0.99 * 2 / a, 1.01 * 2 / a):
        r = stability(
            model, lr, B, loss_fn=F.mse_loss, data=(X, y), nonuniformity="exact", tol=1e-10
        )
        assert isinstance(r, Stability) and r.n == n and r.s_kind == "exact"
        assert r.lambda_max == pytest.approx(a, rel=1e-10)
        assert r.lambda_max_converged and r.s_squared_converged
        assert r.s_squared == pytest.approx(s2, rel=1e-8, abs=1e-8)
        lhs = (1 - lr * a) ** 2 + lr**2 * s2 * _factor(n, B)
        assert r.sgd_lhs == pytest.approx(lhs, rel=1e-8)
        assert r.gd_threshold == pytest.approx(2 / lr)
        assert r.gd_stable is (lr * a <= 2)
        assert r.sgd_stable is (lhs <= 1)
        assert r.is_minimum and r.lambda_min > 0
    # the three learning rates fall on the expected sides
    lo = stability(model, 0.3 / a, B, loss_fn="mse", data=(X, y), nonuniformity="exact")
    assert lo.gd_stable and lo.sgd_stable is True
    assert "GD-stable" in lo.verdict and "SGD-stable" in lo.verdict
    hi = stability(model, 1.01 * 2 / a, B, loss_fn="mse", data=(X, y), nonuniformity="exact")
    assert not hi.gd_stable and hi.sgd_stable is False
    assert "GD-unstable" in hi.verdict and "SGD-unstable" in hi.verdict
    # just below 2/a: GD-stable, but the non-uniformity term makes SGD unstable
    mid = stability(model, 0.99 * 2 / a, B, loss_fn="mse", data=(X, y), nonuniformity="exact")
    assert mid.gd_stable and mid.sgd_stable is False and mid.sgd_lhs > 1


def test_linear_regression_lower_bound() -> None:
    model, X, y = _linreg()
    n, B = X.shape[0], 3
    a, s2, lb = _linreg_closed_form(X)
    assert lb <= s2 + 1e-12
    for lr in (0.3 / a, 0.99 * 2 / a):
        r = stability(model, lr, B, loss_fn="mse", data=(X, y), tol=1e-10)
        assert r.s_kind == "lower bound" and r.s_squared_converged is None
        assert r.s_squared == pytest.approx(lb, rel=1e-8, abs=1e-10)
        assert r.s_squared <= s2 * (1 + 1e-10)
        lhs = (1 - lr * a) ** 2 + lr**2 * r.s_squared * _factor(n, B)
        assert r.sgd_lhs == pytest.approx(lhs, rel=1e-8)
        if lhs > 1:
            assert r.sgd_stable is False and "SGD-unstable" in r.verdict
        else:
            assert r.sgd_stable is None and "not shown unstable" in r.verdict
        assert r.n_sample_hvps == n
        assert any("lower bound" in note for note in r.notes)
    # full batch: SGD = GD, the non-uniformity term vanishes
    full = stability(model, 0.99 * 2 / a, n, loss_fn="mse", data=(X, y), nonuniformity="exact")
    assert full.sgd_lhs == pytest.approx((1 - 0.99 * 2) ** 2, rel=1e-6) and full.sgd_stable
    # GD only / no s²
    gd = stability(model, 0.5 / a, loss_fn="mse", data=(X, y))
    assert gd.batch_size is None and gd.s_squared is None and gd.sgd_stable is None
    none = stability(model, 0.5 / a, 4, loss_fn="mse", data=(X, y), nonuniformity="none")
    assert none.s_squared is None and none.sgd_stable is None and "not checked" in none.verdict
    line = stability(model, 0.5 / a, 4, loss_fn="mse", data=(X, y)).describe()
    assert "\n" not in line and "B=4" in line and "s^2 >=" in line


# ---------------------------------------------------------------------- per-sample HVPs
def _loop_hvps(model: nn.Module, X, y, V: torch.Tensor) -> torch.Tensor:
    params = list(model.parameters())
    rows = []
    for i in range(X.shape[0]):
        loss = F.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
        g = autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([t.reshape(-1) for t in g])
        v = V if V.dim() == 1 else V[i]
        hv = autograd.grad(flat @ v, params)
        rows.append(torch.cat([t.reshape(-1) for t in hv]))
    return torch.stack(rows)


def test_per_sample_hvp_matches_double_backward_loop() -> None:
    model, X, y = _mlp()
    H = lf.Hessian(model, nn.CrossEntropyLoss(), (X, y), batch_size=4)  # 3 batches: 4, 4, 2
    p = H.shape[0]
    g = torch.Generator().manual_seed(1)
    v = torch.randn(p, generator=g, dtype=DT)
    V = torch.randn(X.shape[0], p, generator=g, dtype=DT)
    ref_v, ref_V = _loop_hvps(model, X, y, v), _loop_hvps(model, X, y, V)
    for chunk in (None, 3):
        got_v = per_sample_hvp(H, v, chunk_size=chunk)
        got_V = per_sample_hvp(H, V, chunk_size=chunk)
        torch.testing.assert_close(got_v, ref_v, rtol=0, atol=1e-10)
        torch.testing.assert_close(got_V, ref_V, rtol=0, atol=1e-10)
    # their mean is the Hessian product
    torch.testing.assert_close(ref_v.mean(0), H.matmat(v), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="rows"):
        per_sample_hvp(H, V[:5])


def test_exact_nonuniformity_on_mlp_matches_dense() -> None:
    model, X, y = _mlp(n=8)
    H = lf.Hessian(model, "ce", (X, y))
    p = H.shape[0]
    eye = torch.eye(p, dtype=DT)
    Hi = torch.stack([per_sample_hvp(H, eye[j]) for j in range(p)], dim=2)  # (n, p, p)
    Hbar = Hi.mean(0)
    M = (Hi @ Hi).mean(0) - Hbar @ Hbar
    torch.testing.assert_close(NonUniformityOperator(H).to_dense(), M, rtol=0, atol=1e-10)
    s2 = torch.linalg.eigvalsh((M + M.T) / 2)[-1].item()
    a = torch.linalg.eigvalsh(Hbar)[-1].item()
    r = stability(H, 1.0 / a, 2, nonuniformity="exact", tol=1e-10)
    assert r.s_squared == pytest.approx(s2, rel=1e-8)
    lb = stability(H, 1.0 / a, 2, tol=1e-10)
    assert lb.s_squared <= s2 * (1 + 1e-8)


# ---------------------------------------------------------------------- plain operators
def test_dense_operator_gd_only() -> None:
    A = lf.DenseOperator(torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=DT)))
    r = stability(A, 0.4, tol=1e-10)
    assert r.lambda_max == pytest.approx(4.0) and r.lambda_min == pytest.approx(0.5)
    assert r.gd_stable and r.gd_margin == pytest.approx(0.8) and r.n is None
    assert r.s_squared is None and r.sgd_lhs is None and r.n_matvecs > 0
    assert not stability(A, 0.6).gd_stable
    with pytest.raises(ValueError, match="per-sample curvature"):
        stability(A, 0.1, 4)
    saddle = lf.DenseOperator(torch.diag(torch.tensor([2.0, -1.0], dtype=DT)))
    s = stability(saddle, 0.1, tol=1e-10)
    assert not s.is_minimum and "Not a minimum" in s.verdict


# ---------------------------------------------------------------------- model untouched
def test_model_left_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 2)
    ).double()
    X, y = torch.randn(9, 3, dtype=DT), torch.randint(0, 2, (9,))
    model.train()
    model(X).sum().backward()  # populate .grad and the running statistics
    model[0].weight.grad = None  # one None grad, others set
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    for kind in ("lower_bound", "exact"):
        stability(model, 0.1, 3, loss_fn="ce", data=(X, y), nonuniformity=kind)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]) and v.dtype == state[k].dtype, k
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == modes


# ---------------------------------------------------------------------- bad input
def test_bad_input() -> None:
    model, X, y = _linreg()
    kw = {"loss_fn": "mse", "data": (X, y)}
    for lr in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr must be"):
            stability(model, lr, **kw)
    for B in (0, -2, 2.5):
        with pytest.raises(ValueError, match="batch_size must be"):
            stability(model, 0.1, B, **kw)
    with pytest.raises(ValueError, match="exceeds the number of samples n=12"):
        stability(model, 0.1, 13, **kw)
    with pytest.raises(ValueError, match="nonuniformity must be"):
        stability(model, 0.1, 4, nonuniformity="upper", **kw)
    with pytest.raises(ValueError, match="needs loss_fn= and data="):
        stability(model, 0.1, data=(X, y))
    H = lf.Hessian(model, "mse", (X, y))
    with pytest.raises(ValueError, match="only for a model"):
        stability(H, 0.1, loss_fn="mse")
    with pytest.raises(TypeError, match="CurvatureOperator or an nn.Module"):
        stability(torch.eye(3), 0.1)
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    Hb = lf.Hessian(bn, "mse", (X, y), batch_norm="batch")
    with pytest.raises(ValueError, match="BatchNorm"):
        stability(Hb, 0.1, 4)
    summed = nn.MSELoss(reduction="sum")
    with pytest.raises(ValueError, match="not the mean of the per-sample"):
        stability(model, 0.01, 4, loss_fn=summed, data=(X, y))
