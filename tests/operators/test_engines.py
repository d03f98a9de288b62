"""HVP engines: agreement, auto selection and its report, planner, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import landscape_fast as lf
from landscape_fast import testing as T
from landscape_fast.operators.engines import CachedEngine, FiniteDifferenceEngine, block_vjp


class _FusedTanhNet(nn.Module):
    def __init__(self, fn=T.FirstOrderTanhFn) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)
        self.fn = fn

    def forward(self, x):
        return self.b(self.fn.apply(self.a(x)))


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(
        0, 2, (n,), generator=g
    )


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def test_auto_prefers_cached_and_says_so():
    H = lf.Hessian(_mlp(), "ce", _data())
    assert H.engine is None
    H.matmat(torch.randn(1, H.shape[0], dtype=torch.float64))
    assert H.engine == "cached"
    assert H.describe()["engine"] == "cached" and H.describe()["batch_norm"] == "eval"


def test_auto_falls_back_to_finite_differences_without_double_backward():
    torch.manual_seed(0)
    model = _FusedTanhNet().double()
    H = lf.Hessian(model, "ce", _data())
    V = torch.randn(2, H.shape[0], dtype=torch.float64)
    out = H.matmat(V)
    assert H.engine == "finite_difference"
    assert "cached failed" in H.engine_reason and "forward failed" in H.engine_reason
    # The same network with a differentiable tanh gives the exact answer.
    twin = _mlp()
    twin[0].load_state_dict(model.a.state_dict())
    twin[2].load_state_dict(model.b.state_dict())
    exact = lf.Hessian(twin, "ce", _data(), hvp="reverse").matmat(V)
    assert torch.allclose(out, exact, rtol=1e-7, atol=1e-8)
    with pytest.raises(RuntimeError):
        lf.Hessian(model, "ce", _data(), hvp="reverse").matmat(V)


def test_silently_wrong_double_backward_is_refused_and_auto_uses_finite_differences():
    torch.manual_seed(0)
    model = _FusedTanhNet(T.OnceDifferentiableTanhFn).double()
    V = torch.randn(2, 32, dtype=torch.float64)
    for hvp in ("reverse", "cached"):
        with pytest.raises(RuntimeError, match="not differentiable"):
            lf.Hessian(model, "ce", _data(), hvp=hvp).matmat(V)
    H = lf.Hessian(model, "ce", _data())
    out = H.matmat(V)
    assert H.engine == "finite_difference" and "not differentiable" in H.engine_reason
    twin = _FusedTanhNet(T.FirstOrderTanhFn).double()
    exact = lf.Hessian(twin, "ce", _data(), hvp="finite_difference")
    exact.model.load_state_dict(model.state_dict())
    assert torch.allclose(out, exact.matmat(V))


def test_auto_rejects_an_engine_that_disagrees_with_finite_differences(monkeypatch):
    from landscape_fast.operators import engines

    real = engines.CachedEngine.batch_products

    def wrong(self, *args, **kwargs):
        return [None if t is None else 1.5 * t for t in real(self, *args, **kwargs)]

    monkeypatch.setattr(engines.CachedEngine, "batch_products", wrong)
    # the check runs where the graph holds user-written derivatives (here: pretend it does)
    monkeypatch.setattr(engines, "custom_derivative_nodes", lambda loss: ["UserFnBackward"])
    H = lf.Hessian(_mlp(), "ce", _data())
    H.matmat(torch.randn(1, H.shape[0], dtype=torch.float64))
    assert H.engine == "forward"
    assert "cached failed: disagrees with finite differences" in H.engine_reason
    assert "UserFnBackward" in H.engine_reason


def test_custom_derivative_nodes_finds_user_functions_only(monkeypatch):
    from landscape_fast.operators import engines
    from landscape_fast.operators.fused_ce import fused_cross_entropy

    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    builtin = torch.nn.functional.cross_entropy(torch.tanh(x) @ x.T, y)
    assert engines.custom_derivative_nodes(builtin) == []
    assert engines.custom_derivative_nodes(fused_cross_entropy(torch.tanh(x), y)) == []
    user = T.OnceDifferentiableTanhFn.apply(x).sum() + T.FirstOrderTanhFn.apply(x).sum()
    assert engines.custom_derivative_nodes(user) == [
        "FirstOrderTanhFnBackward",
        "OnceDifferentiableTanhFnBackward",
    ]
    # a graph of built-in operators only: no finite-difference check is paid for
    calls = []
    real = engines.verify_against_finite_differences
    monkeypatch.setattr(
        engines,
        "verify_against_finite_differences",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    H = lf.Hessian(_mlp(), "ce", _data())
    H.matmat(torch.randn(1, H.shape[0], dtype=torch.float64))
    assert calls == [] and H.engine == "cached"


def test_cached_engine_keeps_graphs_within_budget_and_rebuilds_after_a_step():
    model = _mlp()
    H = lf.Hessian(model, "ce", _data(), batch_size=8, hvp="cached")
    V = torch.randn(3, H.shape[0], dtype=torch.float64)
    first = H.matmat(V)
    engine = H._engine
    assert isinstance(engine, CachedEngine) and len(engine._cache) == 3
    assert torch.equal(H.matmat(V), first)
    with torch.no_grad():
        model[0].weight.add_(0.1)
    moved = H.matmat(V)
    assert not torch.allclose(moved, first)
    assert torch.allclose(moved, lf.Hessian(model, "ce", _data(), hvp="reverse").matmat(V))
    tight = lf.Hessian(model, "ce", _data(), batch_size=8, hvp="cached", memory_budget=1)
    assert torch.allclose(tight.matmat(V), moved) and not tight._engine._cache


def _cached_note(batched):
    H = lf.Hessian(_mlp(), "ce", _data(), hvp=CachedEngine(1 << 30, batched=batched))
    H.matmat(torch.randn(2, 32, dtype=torch.float64))
    return H._engine.batching_note


def test_cached_engine_batching_modes():
    V = torch.randn(5, 32, dtype=torch.float64)
    ref = lf.Hessian(_mlp(), "ce", _data(), hvp="reverse").matmat(V)
    for batched in (None, True, False):
        H = lf.Hessian(_mlp(), "ce", _data(), hvp=CachedEngine(1 << 30, batched=batched))
        assert torch.allclose(H.matmat(V), ref, rtol=1e-12, atol=1e-14)
        assert H._engine.batched is (batched if batched is not None else False)
    assert "CPU" in _cached_note(None)
    # The timing trial (CUDA) keeps the faster way and returns its result.
    H = lf.Hessian(_mlp(), "ce", _data(), hvp="cached")
    H.matmat(V)
    theta, grads = H._engine._cache[0]
    views = H.space.views(V)
    out = H._engine._choose(grads, theta, views, chunk=5)
    assert H._engine.batched in (True, False) and "looped" in H._engine.batching_note
    assert torch.allclose(H.flat_block(out, V), ref, rtol=1e-12, atol=1e-14)  # one batch


def test_forward_engine_chunks_to_the_budget():
    H = lf.Hessian(_mlp(), "ce", _data(), hvp="forward", memory_budget=1)
    V = torch.randn(5, H.shape[0], dtype=torch.float64)
    out = H.matmat(V)
    assert H._engine.chunk == 1
    assert torch.allclose(out, lf.Hessian(_mlp(), "ce", _data(), hvp="reverse").matmat(V))


def test_finite_difference_step_and_zero_vector():
    eng = FiniteDifferenceEngine()
    theta = [torch.full((3,), 4.0, dtype=torch.float64)]
    h = eng.step(theta, [torch.ones(3, dtype=torch.float64)])
    assert h == pytest.approx(torch.finfo(torch.float64).eps ** (1 / 3) * 4.0 / 3**0.5)
    H = lf.Hessian(_mlp(), "ce", _data(), hvp="finite_difference")
    assert torch.equal(
        H.matmat(torch.zeros(1, H.shape[0], dtype=torch.float64)),
        torch.zeros(1, H.shape[0], dtype=torch.float64),
    )
    with pytest.raises(ValueError):
        FiniteDifferenceEngine(step_scale=0)


def test_block_vjp_batched_equals_looped_and_skips_constants():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out = [x.sin() * 2, None, torch.ones(2, dtype=torch.float64)]
    cots = [torch.randn(5, 4, dtype=torch.float64), None, torch.randn(5, 2, dtype=torch.float64)]
    a = block_vjp(out, [x, y], cots, batched=True, chunk=2)
    b = block_vjp(out, [x, y], cots, batched=False)
    assert torch.allclose(a[0], b[0]) and a[1] is None and b[1] is None
    assert block_vjp([None], [x], [cots[0]], batched=True) == [None]


# ---------------------------------------------------------------------- bad input
def test_errors_name_the_problem():
    model = _mlp()
    X, y = _data()
    with pytest.raises(ValueError, match="no trainable parameters"):
        lf.Hessian(nn.Sequential(nn.ReLU()), "ce", (X, y))
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        lf.Hessian(frozen, "ce", (X, y))
    with pytest.raises(ValueError, match="empty"):
        lf.Hessian(model, "ce", (X[:0], y[:0]))
    with pytest.raises(TypeError, match="floating dtype"):
        lf.Hessian(model, "ce", (X, y), dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown loss"):
        lf.Hessian(model, "hinge", (X, y))
    H = lf.Hessian(
        model, lambda out, t: nn.functional.cross_entropy(out, t, reduction="none"), (X, y)
    )
    with pytest.raises(ValueError, match="scalar"):
        H.matmat(torch.randn(1, H.shape[0], dtype=torch.float64))
    H = lf.Hessian(model, "ce", (X, y))
    with pytest.raises(TypeError, match="float32"):
        H.matmat(torch.randn(1, H.shape[0], dtype=torch.float32))
    with pytest.raises(ValueError, match="block"):
        H.matmat(torch.randn(1, H.shape[0] + 1, dtype=torch.float64))


@pytest.mark.parametrize("hvp", ["reverse", "cached", "forward", "finite_difference", "auto"])
def test_non_finite_loss_names_the_batch(hvp):
    X, y = _data()
    X = X.clone()
    X[13, 0] = float("inf")
    H = lf.Hessian(_mlp(), "ce", (X, y), batch_size=5, hvp=hvp)
    with pytest.raises(FloatingPointError, match="batch 2"):
        H.matmat(torch.randn(1, H.shape[0], dtype=torch.float64))


def test_non_finite_curvature_names_the_parameter():
    class Sqrt(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
            self.v = nn.Parameter(torch.ones(2, dtype=torch.float64))

        def forward(self, x):
            return x * (self.w.abs().sqrt().sum() + self.v.sum())

    H = lf.Hessian(
        Sqrt(),
        "mse",
        (torch.ones(3, 1, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)),
        hvp="reverse",
    )
    with pytest.raises(FloatingPointError, match="in parameters \\['w'"):
        H.matmat(torch.ones(1, 4, dtype=torch.float64))


def test_ggn_needs_pairs():
    X, y = _data()
    G = lf.GGN(
        _mlp(), lambda m, b: nn.functional.cross_entropy(m(b["x"]), b["y"]), [{"x": X, "y": y}]
    )
    with pytest.raises(TypeError, match="GGN needs"):
        G.matmat(torch.randn(1, G.shape[0], dtype=torch.float64))
