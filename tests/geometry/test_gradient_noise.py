"""Tests of ``gradient_noise``: closed forms, autograd loops, estimator coverage, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_fast.geometry.gradient_noise import GradientNoise, gradient_noise

f64 = torch.float64


def _regression(n: int = 30, d: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=f64)
    y = torch.randn(n, 1, generator=gen, dtype=f64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=gen, dtype=f64))
    return model, X, y


def _mlp(n: int = 24, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    X = torch.randn(n, 4, generator=gen, dtype=f64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, X, y


@pytest.mark.parametrize("loss_fn", ["mse", F.mse_loss])
def test_linear_regression_closed_form(loss_fn):
    model, X, y = _regression()
    N = X.shape[0]
    theta = model.weight.detach().reshape(-1)
    r = X @ theta - y.reshape(-1)
    G = 2 * r[:, None] * X  # per-sample gradients of (x_i^T θ - y_i)^2
    gbar = G.mean(0)
    C = G - gbar
    H = 2 / N * X.T @ X
    tr_cov = float((C**2).sum() / N)
    tr_hs = float(torch.einsum("ip,pq,iq->", C, H, C) / N)
    gHg = float(gbar @ H @ gbar)
    # batches of 7: the merge of batch means must be exact too
    batches = [(X[i : i + 7], y[i : i + 7]) for i in range(0, N, 7)]
    for data in ((X, y), batches):
        res = gradient_noise(model, loss_fn, data, curvature_samples=N + 5)
        assert isinstance(res, GradientNoise)
        assert res.n == N and res.p == X.shape[1]
        assert res.trace_cov == pytest.approx(tr_cov, rel=1e-10, abs=1e-12)
        assert res.grad_norm_sq == pytest.approx(float(gbar @ gbar), rel=1e-10)
        assert res.b_simple == pytest.approx(tr_cov / float(gbar @ gbar), rel=1e-10)
        assert res.gHg == pytest.approx(gHg, rel=1e-10)
        assert res.tr_h_sigma.value == pytest.approx(tr_hs, rel=1e-10)
        assert res.tr_h_sigma.stderr == 0 and res.b_noise_stderr == 0
        assert res.b_noise == pytest.approx(tr_hs / gHg, rel=1e-10)
        assert res.n_matvecs == N + 1
        assert "exact" in res.describe()


def test_trace_cov_does_not_cancel():
    # g_i = 2e4 (a + eps_i) with |eps_i| ~ 1e-7: the noise is 1e-14 of |ḡ|², so
    # mean|g_i|² - |ḡ|² loses almost every digit; the centred sum keeps them.
    gen = torch.Generator().manual_seed(0)
    n, d = 20, 3
    eps = 1e-7 * torch.randn(n, d, generator=gen, dtype=f64)
    X = 1.0 + eps
    model = nn.Linear(d, 1, bias=False).double()
    theta = model.weight.detach().reshape(-1)
    y = (X @ theta - 1e4)[:, None]
    res = gradient_noise(model, "mse", (X, y), curvature_samples=0)
    truth = float(((2e4 * (eps - eps.mean(0))) ** 2).sum() / n)
    G = 2 * (X @ theta - y.reshape(-1))[:, None] * X
    naive = float((G**2).sum(1).mean() - G.mean(0) @ G.mean(0))
    assert abs(naive - truth) > 1e-4 * truth  # the test can tell
    assert res.trace_cov == pytest.approx(truth, rel=1e-6)
    assert res.tr_h_sigma is None and math.isnan(res.b_noise) and res.n_matvecs == 0


def _loop_per_sample(model, X, y):
    rows = []
    for i in range(X.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def test_mlp_against_autograd_loop_and_estimator_coverage():
    model, X, y = _mlp()
    G = _loop_per_sample(model, X, y)
    gbar = G.mean(0)
    C = G - gbar
    exact = gradient_noise(model, "ce", (X, y), curvature_samples=X.shape[0])
    assert exact.trace_cov == pytest.approx(float((C**2).sum(1).mean()), rel=1e-10)
    assert exact.grad_norm_sq == pytest.approx(float(gbar @ gbar), rel=1e-10)
    assert exact.tr_h_sigma.stderr == 0
    truth = float(exact.tr_h_sigma.value)
    for seed in range(6):
        est = gradient_noise(model, "ce", (X, y), curvature_samples=8, seed=seed)
        assert est.trace_cov == exact.trace_cov and est.gHg == pytest.approx(exact.gHg)
        se = est.tr_h_sigma.stderr
        assert 0 < se < math.inf
        assert abs(float(est.tr_h_sigma.value) - truth) <= 3 * se
        assert est.b_noise_stderr == pytest.approx(se / abs(est.gHg))
        assert est.tr_h_sigma.n_matvecs == 9
    again = gradient_noise(model, "ce", (X, y), curvature_samples=8, seed=5)
    assert again.tr_h_sigma.value == est.tr_h_sigma.value  # seeded


def test_sgd_noise_levels():
    model, X, y = _mlp(n=30)
    lr, B = 0.05, 4
    res = gradient_noise(model, "ce", (X, y), lr=lr, batch_size=B, curvature_samples=0)
    fpc = (30 - B) / 29
    assert res.fpc == fpc
    assert res.sde_noise_trace == pytest.approx(lr * res.trace_cov / B * fpc, rel=1e-14)
    assert res.temperature_isotropic == pytest.approx(
        lr * res.trace_cov / (2 * res.p * B) * fpc, rel=1e-14
    )
    assert res.document_temperature_invalid == lr * res.trace_cov / B
    full = gradient_noise(model, "ce", (X, y), lr=lr, batch_size=30, curvature_samples=0)
    assert full.fpc == 0 and full.sde_noise_trace == 0  # the full batch has no noise
    plain = gradient_noise(model, "ce", (X, y), curvature_samples=0)
    assert plain.fpc is None and plain.temperature_isotropic is None


def test_model_left_unchanged():
    model, X, y = _mlp()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradient_noise(model, "ce", (X, y), lr=0.1, batch_size=4, curvature_samples=5)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_negative_curvature_along_gradient_is_reported():
    model = nn.Linear(2, 1, bias=False).double()

    def loss(out, target):  # concave: ḡᵀHḡ < 0
        return -(out - target).square().mean()

    X, y = torch.randn(10, 2, dtype=f64), torch.randn(10, 1, dtype=f64)
    res = gradient_noise(model, loss, (X, y), curvature_samples=10)
    assert res.gHg < 0 and math.isnan(res.b_noise)
    assert any("undefined" in n for n in res.notes) and "undefined" in res.describe()


def test_bad_input():
    model, X, y = _mlp()
    with pytest.raises(ValueError, match="empty"):
        gradient_noise(model, "ce", (X[:0], y[:0]))
    for kwargs, match in [
        ({"lr": 0.0, "batch_size": 4}, "lr must be"),
        ({"lr": -1.0, "batch_size": 4}, "lr must be"),
        ({"lr": 0.1, "batch_size": 0}, "batch_size must be"),
        ({"lr": 0.1, "batch_size": 25}, "exceeds the 24 samples"),
        ({"lr": 0.1}, "both"),
        ({"curvature_samples": -1}, "curvature_samples"),
    ]:
        with pytest.raises(ValueError, match=match):
            gradient_noise(model, "ce", (X, y), **kwargs)
    bad = X.clone()
    bad[3, 0] = math.nan
    with pytest.raises(FloatingPointError):
        gradient_noise(model, "ce", (bad, y))
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    with pytest.raises(ValueError, match="BatchNorm"):
        gradient_noise(bn, "ce", (X, y), batch_norm="batch")
    summed = nn.CrossEntropyLoss(reduction="sum")
    with pytest.raises(ValueError, match="mean"):
        gradient_noise(model, summed, (X, y))


def test_float32_model_matches_float64():
    model, X, y = _mlp(n=40)
    ref = gradient_noise(model, "ce", (X, y), curvature_samples=40)
    model32 = model.float()
    res = gradient_noise(model32, "ce", (X.float(), y), curvature_samples=40)
    assert res.trace_cov == pytest.approx(ref.trace_cov, rel=1e-5)
    assert res.grad_norm_sq == pytest.approx(ref.grad_norm_sq, rel=1e-5)
    assert float(res.tr_h_sigma.value) == pytest.approx(float(ref.tr_h_sigma.value), rel=1e-4)
    via64 = gradient_noise(model32, "ce", (X.float(), y), dtype=torch.float64, curvature_samples=0)
    assert via64.trace_cov == pytest.approx(ref.trace_cov, rel=1e-6)


def test_per_sample_norms_equal_per_sample_gradients():
    model, X, y = _mlp(n=29)
    data = [(X[i : i + 8], y[i : i + 8]) for i in range(0, 29, 8)]
    kw = dict(curvature_samples=7, seed=3, lr=0.1, batch_size=4)
    by_norms = gradient_noise(model, "ce", data, per_sample="norms", **kw)
    by_vmap = gradient_noise(model, "ce", data, per_sample="vmap", **kw)
    auto = gradient_noise(model, "ce", data, **kw)
    assert (by_norms.per_sample, by_vmap.per_sample, auto.per_sample) == ("norms", "vmap", "norms")
    for name in ("trace_cov", "grad_norm_sq", "b_simple", "gHg", "b_noise", "b_noise_stderr"):
        assert getattr(by_norms, name) == pytest.approx(getattr(by_vmap, name), rel=1e-10)


def test_per_sample_norms_fall_back_where_they_do_not_apply():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(12, 1, 5, generator=gen, dtype=f64), torch.randint(0, 2, (12,))
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 2)).double()
    r = gradient_noise(conv, "ce", (X, y), curvature_samples=0)
    assert r.per_sample == "vmap"
    with pytest.raises(ValueError, match="not the weight or bias of an nn.Linear"):
        gradient_noise(conv, "ce", (X, y), curvature_samples=0, per_sample="norms")
    with pytest.raises(ValueError, match="per_sample must be"):
        gradient_noise(conv, "ce", (X, y), per_sample="ghost")


def test_per_sample_norms_cancel_when_noise_vanishes():
    # Identical samples: Σ = 0 exactly, so sum‖g_i‖² − N‖ḡ‖² is all rounding error; auto mode
    # notices and recomputes from centred gradients, which give 0 to rounding.
    model, X, y = _mlp(n=1)
    X, y = X.float().repeat(16, 1), y.repeat(16)
    model = model.float()
    r = gradient_noise(model, "ce", (X, y), curvature_samples=0)
    assert r.per_sample == "vmap" and any("cancelled" in n for n in r.notes)
    assert r.trace_cov <= 1e-10 * r.grad_norm_sq * 16
    forced = gradient_noise(model, "ce", (X, y), curvature_samples=0, per_sample="norms")
    assert forced.per_sample == "norms" and any("rounding error" in n for n in forced.notes)
