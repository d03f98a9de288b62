"""``lf.EmpiricalFisher`` and ``lf.GradientCovariance`` against explicit per-sample gradients.

With ``g_i`` the gradient of sample ``i``'s loss (a batch of one, plain autograd in float64,
:func:`landscape_fast.testing.per_sample_grads`) and ``N`` samples over all batches:

    F = (1/N) Σ g_i g_iᵀ,    Σ = (1/N) Σ (g_i − ḡ)(g_i − ḡ)ᵀ  (population covariance),

so ``F − ḡḡᵀ = Σ``. Measured relative errors in float64: ≤ 3e-16 on every model here.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape_fast as lf
from landscape_fast import testing as T
from landscape_fast import zoo

F64 = torch.float64
TOL = 1e-10
OPERATORS = {"fisher": lf.EmpiricalFisher, "covariance": lf.GradientCovariance}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _split(X: torch.Tensor, y: torch.Tensor, size: int) -> list:
    return [(X[i : i + size], y[i : i + size]) for i in range(0, len(X), size)]


def _mlp(out: int = 3, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, out)).double()


def _ce_case(seed: int = 0) -> tuple[nn.Module, Any, list]:
    g = _gen(seed + 100)
    X, y = torch.randn(23, 5, dtype=F64, generator=g), torch.randint(0, 3, (23,), generator=g)
    return _mlp(seed=seed), nn.CrossEntropyLoss(), _split(X, y, 10)  # 10, 10, 3


def _mse_case(seed: int = 0) -> tuple[nn.Module, Any, list]:
    g = _gen(seed + 200)
    X, Y = torch.randn(19, 5, dtype=F64, generator=g), torch.randn(19, 2, dtype=F64, generator=g)
    return _mlp(out=2, seed=seed), "mse", _split(X, Y, 8)


def _lm_case(seed: int = 0) -> tuple[nn.Module, Any, list]:
    model = zoo.tiny_transformer(vocab=8, d_model=4, n_heads=2, n_layers=1, seq_len=4, seed=seed)
    model = model.double()
    g = _gen(seed + 300)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    X, y = zoo.token_data(n=11, seq_len=4, vocab=8, seed=seed)
    return model, zoo.lm_loss, _split(X, y, 4)


def _resnet_case(seed: int = 0) -> tuple[nn.Module, Any, list]:
    model = zoo.resnet20(depth=8, width=4, seed=seed)
    X, y = zoo.cifar_like_data(n=16, seed=seed, size=8)
    zoo.train(model, X, y, max_epochs=1, batch_size=8, seconds=60.0)  # running stats move
    return model.double().eval(), F.cross_entropy, _split(X.double(), y, 6)


CASES = {"ce": _ce_case, "mse": _mse_case, "lm": _lm_case, "resnet_bn_eval": _resnet_case}


def _definitions(model: nn.Module, loss: Any, batches: list) -> tuple[torch.Tensor, ...]:
    G = T.per_sample_grads(model, loss, batches)
    g = G.mean(0)
    C = G - g
    return G, g, G.T @ G / len(G), C.T @ C / len(G)


# ------------------------------------------------------------------ definitions
@pytest.mark.parametrize("case", ["ce", "mse", "lm"])
def test_matches_per_sample_definition(case: str) -> None:
    model, loss, batches = CASES[case]()
    G, g, Fd, Sd = _definitions(model, loss, batches)
    assert len(G) == sum(len(b[0]) for b in batches)  # 1/N over all samples, ragged included
    Fop, Sop = lf.EmpiricalFisher(model, loss, batches), lf.GradientCovariance(model, loss, batches)
    assert Fop.dtype == F64 and Sop.shape == (G.shape[1], G.shape[1])
    assert T.rel_error(Fop.to_dense(), Fd) < TOL
    assert T.rel_error(Sop.to_dense(), Sd) < TOL
    # the mean gradient is the gradient of the mean loss
    assert T.rel_error(Fop.loss_and_gradient()[1], g) < 1e-12
    assert T.rel_error(T.dense_gradient(model, loss, batches)[1], g) < 1e-12


def test_resnet_block() -> None:
    model, loss, batches = _resnet_case()
    G, g, _, _ = _definitions(model, loss, batches)
    V = torch.randn(3, G.shape[1], dtype=F64, generator=_gen(1))
    F_V = (V @ G.T) @ G / len(G)
    S_V = (V @ (G - g).T) @ (G - g) / len(G)
    assert T.rel_error(lf.EmpiricalFisher(model, loss, batches).matmat(V), F_V) < TOL
    assert T.rel_error(lf.GradientCovariance(model, loss, batches).matmat(V), S_V) < TOL


@pytest.mark.parametrize("op", list(OPERATORS))
@pytest.mark.parametrize("precision", ["float64_on_float32", "bfloat16"])
def test_precision(op: str, precision: str) -> None:
    """``dtype=float64`` on a float32 model equals the float64 definition; a bfloat16 model
    gives float32 results to bfloat16 accuracy (measured 3.9e-3 / 4.5e-3)."""
    model, loss, batches = _ce_case(seed=14)
    batches = [(x.float(), y) for x, y in batches]
    if precision == "bfloat16":
        model, kw, dtype, tol = model.bfloat16(), {}, torch.float32, 2e-2
    else:
        model, kw, dtype, tol = model.float(), {"dtype": F64}, F64, TOL
    G = T.per_sample_grads(model, loss, batches)
    C = G - G.mean(0)
    want = (G.T @ G if op == "fisher" else C.T @ C) / len(G)
    D = OPERATORS[op](model, loss, batches, **kw).to_dense()
    assert D.dtype == dtype
    assert T.rel_error(D, want) < tol


def test_fisher_minus_outer_mean_is_covariance() -> None:
    model, loss, batches = _ce_case(seed=2)
    Fop, Sop = lf.EmpiricalFisher(model, loss, batches), lf.GradientCovariance(model, loss, batches)
    _, g = Fop.loss_and_gradient()
    Fd, Sd = Fop.to_dense(), Sop.to_dense()
    assert T.rel_error(Fd - torch.outer(g, g), Sd) < TOL
    # the operator algebra gives the same thing without forming F
    assert T.rel_error((Fop - Sop).to_dense(), torch.outer(g, g)) < 1e-9


def test_covariance_is_centred_not_a_difference() -> None:
    """A large mean gradient (far from a minimum) must not swamp the covariance."""
    model, loss, batches = _mse_case(seed=3)
    batches = [(x, y + 1e3) for x, y in batches]  # huge residuals: |ḡ| >> spread
    _, _, _, Sd = _definitions(model, loss, batches)
    assert T.rel_error(lf.GradientCovariance(model, loss, batches).to_dense(), Sd) < 1e-9


@pytest.mark.parametrize("op", list(OPERATORS))
def test_psd_and_symmetric(op: str) -> None:
    model, loss, batches = _ce_case(seed=4)
    D = OPERATORS[op](model, loss, batches).to_dense()
    assert float((D - D.T).abs().max()) <= 1e-14 * float(D.abs().max())
    eig = torch.linalg.eigvalsh((D + D.T) / 2)
    assert float(eig.min()) > -1e-12 * float(eig.max())
    n = sum(len(b[0]) for b in batches)
    rank = int((eig > 1e-10 * eig.max()).sum())
    assert rank <= n  # at most N per-sample directions (N - 1 after centring)


@pytest.mark.parametrize("op", list(OPERATORS))
def test_params_subset(op: str) -> None:
    model, loss, batches = _ce_case(seed=5)
    want = _definitions(model, loss, batches)[2 if op == "fisher" else 3]
    sub = OPERATORS[op](model, loss, batches, params="2.*").to_dense()
    n = 7 * 3 + 3
    assert T.rel_error(sub, want[-n:, -n:]) < TOL


@pytest.mark.parametrize("op", list(OPERATORS))
def test_frozen_parameters_are_excluded(op: str) -> None:
    model, loss, batches = _ce_case(seed=5)
    want = _definitions(model, loss, batches)[2 if op == "fisher" else 3]
    model[0].requires_grad_(False)
    A = OPERATORS[op](model, loss, batches)
    n = 7 * 3 + 3
    assert A.shape == (n, n)
    assert T.rel_error(A.to_dense(), want[-n:, -n:]) < TOL


# ------------------------------------------------------------------ caching
@pytest.mark.parametrize("op", list(OPERATORS))
def test_caching_and_invalidation_after_parameter_change(op: str) -> None:
    model, loss, batches = _ce_case(seed=6)
    A = OPERATORS[op](model, loss, batches)
    V = torch.randn(4, A.shape[0], dtype=F64, generator=_gen(7))
    first = A.matmat(V)
    assert len(A._cache) == len(batches)  # per-sample gradients kept
    assert torch.equal(A.matmat(V), first)
    X = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.zero_grad()
    F.cross_entropy(model(X), y).backward()
    opt.step()
    _, _, Fd, Sd = _definitions(model, loss, batches)
    want = V @ (Fd if op == "fisher" else Sd)
    assert T.rel_error(want, first) > 1e-3  # the step changed the matrix
    assert T.rel_error(A.matmat(V), want) < TOL


def test_cache_invalidated_after_data_update() -> None:
    model, loss, batches = _ce_case(seed=8)
    A = lf.EmpiricalFisher(model, loss, batches)
    A.to_dense()
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(0.5 * torch.randn(p.shape, generator=_gen(9), dtype=F64))
    assert T.rel_error(A.to_dense(), _definitions(model, loss, batches)[2]) < TOL


def test_without_cache_budget() -> None:
    """A memory budget too small to keep the gradients: recomputed on every product."""
    model, loss, batches = _ce_case(seed=10)
    A = lf.GradientCovariance(model, loss, batches, memory_budget=1024)
    V = torch.randn(2, A.shape[0], dtype=F64, generator=_gen(11))
    want = V @ _definitions(model, loss, batches)[3]
    assert T.rel_error(A.matmat(V), want) < TOL
    assert len(A._cache) == 0
    assert T.rel_error(A.matmat(V), want) < TOL


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("op", list(OPERATORS))
def test_batch_norm_batch_mode_is_refused(op: str) -> None:
    model, loss, batches = _resnet_case()
    with pytest.raises(ValueError, match="batch_norm='eval'"):
        OPERATORS[op](model, loss, batches, batch_norm="batch")


@pytest.mark.parametrize("op", list(OPERATORS))
def test_dropout_is_refused(op: str) -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    _, loss, batches = _ce_case()
    with pytest.raises(ValueError, match="dropout"):
        OPERATORS[op](model, loss, batches, dropout=True)
    OPERATORS[op](model, loss, batches).to_dense()  # dropout off (the default) is fine


@pytest.mark.parametrize("op", list(OPERATORS))
@pytest.mark.parametrize(
    "loss",
    [
        nn.CrossEntropyLoss(reduction="sum"),
        lambda out, y: F.cross_entropy(out, y) + 0.1 * out.sum(),  # sum over the batch
        nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0, 0.5], dtype=F64)),
    ],
    ids=["reduction_sum", "batch_sum_term", "class_weights"],
)
def test_loss_not_a_mean_of_per_sample_losses(op: str, loss: Any) -> None:
    model, _, batches = _ce_case(seed=12)
    A = OPERATORS[op](model, loss, batches)
    with pytest.raises(ValueError, match="not the mean of the per-sample losses"):
        A.matmat(torch.randn(1, A.shape[0], dtype=F64))


@pytest.mark.parametrize("op", list(OPERATORS))
def test_ignore_index_padding_is_refused(op: str) -> None:
    model, loss, batches = _ce_case(seed=13)
    batches = [(x, torch.where(torch.arange(len(y)) % 3 == 0, -100, y)) for x, y in batches]
    A = OPERATORS[op](model, loss, batches)
    with pytest.raises(ValueError, match="not the mean of the per-sample losses"):
        A.matmat(torch.randn(1, A.shape[0], dtype=F64))


def test_model_left_untouched() -> None:
    model, loss, batches = _resnet_case(seed=1)
    model = copy.deepcopy(model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for cls in OPERATORS.values():
        A = cls(model, loss, batches)
        A.matmat(torch.randn(2, A.shape[0], dtype=F64))
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
