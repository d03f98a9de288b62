"""eigsh (block Lanczos, thick restart) against numpy.linalg.eigh on explicit spectra."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import landscape_fast as lf
from landscape_fast import testing as T
from landscape_fast.linalg.eigsh import RestartRecord, wanted_order
from landscape_fast.testing import HouseholderSpectrumOperator, operator_with_spectrum

RNG = np.random.default_rng(0)
SPECTRA = {
    "separated": np.concatenate([np.linspace(5, 20, 10), RNG.uniform(-0.5, 1, 190)]),
    "clustered": np.concatenate([[10, 9.9999, 9.9998, 5, 4.9999], RNG.uniform(-1, 1, 195)]),
    "repeated": np.concatenate([[7.0] * 3, [-7.0] * 2, RNG.uniform(-1, 1, 195)]),
    "indefinite": RNG.standard_normal(200),
    "nullspace": np.concatenate([np.linspace(1, 10, 12), np.zeros(188)]),
}
WHICH = ["LA", "SA", "LM", "BE"]


def expected(eigs: np.ndarray, k: int, which: str) -> np.ndarray:
    """The k wanted eigenvalues in eigsh's output order."""
    s = np.sort(eigs)
    if which == "LA":
        return s[::-1][:k]
    if which == "SA":
        return s[:k]
    if which == "LM":
        return s[np.argsort(-np.abs(s), kind="stable")][:k]
    return np.sort(np.concatenate([s[::-1][: k - k // 2], s[: k // 2]]))[::-1]


def check_result(r, A: np.ndarray, eigs: np.ndarray, k: int, which: str, tol: float) -> None:
    scale = np.abs(eigs).max()
    assert r.converged.all(), (r.eigenvalues, r.residuals)
    got = r.eigenvalues.numpy()
    want = expected(eigs, k, which)
    if which == "LM":  # ties in |λ| (±7) may come in either order
        got, want = np.sort(got), np.sort(want)
    # Symmetric A: an eigenvalue lies within the residual of each Ritz value, and the
    # residual is ≤ tol·scale; quadratic convergence makes the error much smaller.
    np.testing.assert_allclose(got, want, atol=2 * tol * scale)
    V = r.eigenvectors.double().numpy()
    res = np.linalg.norm(V @ A - r.eigenvalues.numpy()[:, None] * V, axis=1)
    np.testing.assert_allclose(r.residuals.numpy(), res, rtol=1e-6, atol=1e-12 * scale)
    assert (res <= tol * scale * (1 + 1e-9)).all()
    np.testing.assert_allclose(V @ V.T, np.eye(k), atol=1e-6)


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("spectrum", list(SPECTRA))
def test_matches_eigh(spectrum: str, which: str) -> None:
    eigs = SPECTRA[spectrum]
    op, A = operator_with_spectrum(eigs, seed=1)
    k, tol = 4, 1e-8
    # Multiplicities beyond the block size are invisible to a Krylov space unless the
    # solver validates with fresh directions (or the block is as wide as the multiplicity).
    r = lf.eigsh(op, k=k, which=which, tol=tol, validate=spectrum == "repeated" or None)
    check_result(r, A.numpy(), eigs, k, which, tol)
    assert r.n_matvecs == op.n_matvecs


@pytest.mark.parametrize("block_size", [1, 2, 3, 5])
def test_block_sizes_agree_and_find_multiplicities(block_size: int) -> None:
    eigs = SPECTRA["repeated"]
    op, A = operator_with_spectrum(eigs, seed=2)
    validate = None if block_size >= 3 else True
    r = lf.eigsh(op, k=5, which="LM", tol=1e-9, block_size=block_size, validate=validate)
    check_result(r, A.numpy(), eigs, 5, "LM", 1e-9)


def test_auto_validation_finds_the_null_space() -> None:
    eigs = SPECTRA["nullspace"]
    op, A = operator_with_spectrum(eigs, seed=3)
    r = lf.eigsh(op, k=6, which="SA", tol=1e-8)
    check_result(r, A.numpy(), eigs, 6, "SA", 1e-8)
    r = lf.eigsh(op, k=15, which="LA", tol=1e-8)  # k above the rank (12)
    check_result(r, A.numpy(), eigs, 15, "LA", 1e-8)
    # one wanted pair, one start vector: a single copy of the null space is all there is
    # to find, so no validation restart is paid for
    r = lf.eigsh(op, k=1, which="SA", tol=1e-8)
    check_result(r, A.numpy(), eigs, 1, "SA", 1e-8)
    validated = lf.eigsh(op, k=1, which="SA", tol=1e-8, validate=True)
    assert r.n_matvecs < validated.n_matvecs
    r = lf.eigsh(op, k=2, which="SA", tol=1e-8, block_size=2)
    check_result(r, A.numpy(), eigs, 2, "SA", 1e-8)


def test_small_nonzero_wanted_values_do_not_trigger_validation() -> None:
    # top-4 reaching down to 0.5 % of the scale, at a loose tol: resolved from zero, so the
    # automatic validation (for null spaces) must not pay its restart
    eigs = np.concatenate([[10.0, 6.0, 3.0, 0.05], RNG.uniform(-0.01, 0.02, 196)])
    op, A = operator_with_spectrum(eigs, seed=12)
    auto = lf.eigsh(op, k=4, tol=1e-3)
    check_result(auto, A.numpy(), eigs, 4, "LA", 1e-3)
    assert auto.n_matvecs == lf.eigsh(op, k=4, tol=1e-3, validate=False).n_matvecs


def test_small_basis_forces_restarts_and_history_records_them() -> None:
    eigs = SPECTRA["indefinite"]
    op, A = operator_with_spectrum(eigs, seed=4)
    records: list[RestartRecord] = []
    r = lf.eigsh(op, k=3, which="LA", tol=1e-9, max_basis=10, callback=records.append)
    check_result(r, A.numpy(), eigs, 3, "LA", 1e-9)
    assert records == r.history and any(rec.restart for rec in r.history)
    assert max(rec.basis_size for rec in r.history) <= 10
    counts = [rec.n_matvecs for rec in r.history]
    assert counts == sorted(counts) and counts[-1] <= r.n_matvecs


def test_default_basis_bound(monkeypatch) -> None:
    from landscape_fast.linalg.eigsh import default_max_basis
    from landscape_fast.operators import memory

    op, _ = operator_with_spectrum(SPECTRA["indefinite"], seed=5)
    r = lf.eigsh(op, k=5, block_size=2, tol=1e-10)
    assert max(rec.basis_size for rec in r.history) <= max(5 + 2 * 2 + 20, 60)
    assert default_max_basis(op, 5, 2) == 60
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)  # 60 vectors: no
    assert default_max_basis(op, 5, 2) == 5 + 2 * 2 + 20
    r = lf.eigsh(op, k=5, block_size=2, tol=1e-10)
    assert max(rec.basis_size for rec in r.history) <= 5 + 2 * 2 + 20


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stored_products_give_the_true_residuals_without_extra_products(monkeypatch, dtype) -> None:
    import importlib

    from landscape_fast.operators import memory

    eigsh_mod = importlib.import_module("landscape_fast.linalg.eigsh")  # the module
    eigs = SPECTRA["clustered"]
    op, A = operator_with_spectrum(eigs, seed=11, dtype=dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert eigsh_mod.keeps_products(op, 40, dtype, op.device)
    kept = lf.eigsh(op, k=4, tol=tol, max_basis=12)  # restarts rotate the stored products
    assert any(rec.restart for rec in kept.history)
    assert kept.n_matvecs == kept.history[-1].n_matvecs  # the residual check was free
    V = kept.eigenvectors.double().numpy()
    true = np.linalg.norm(V @ A.double().numpy() - kept.eigenvalues.numpy()[:, None] * V, axis=1)
    floor = 1e-13 if dtype == torch.float64 else 1e-5  # float32: rounding of the products
    np.testing.assert_allclose(kept.residuals.numpy(), true, rtol=1e-3, atol=floor * 10)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    assert not eigsh_mod.keeps_products(op, 40, dtype, op.device)
    fresh = lf.eigsh(op, k=4, tol=tol, max_basis=12)  # no room: one more product of the k
    assert fresh.n_matvecs == fresh.history[-1].n_matvecs + 4
    np.testing.assert_allclose(fresh.eigenvalues.numpy(), kept.eigenvalues.numpy(), rtol=1e-6)
    np.testing.assert_allclose(fresh.residuals.numpy(), kept.residuals.numpy(), atol=floor * 10)
    assert not eigsh_mod.keeps_products(op, 40, torch.bfloat16, op.device)  # rounded basis


def test_k_equals_p_and_tiny_operators() -> None:
    eigs = np.array([3.0, -1.0, 2.0, 0.5, 0.0, 7.0])
    op, A = operator_with_spectrum(eigs, seed=6)
    r = lf.eigsh(op, k=6, which="LA", tol=1e-10)
    check_result(r, A.numpy(), eigs, 6, "LA", 1e-10)
    one = lf.DenseOperator(torch.tensor([[2.5]], dtype=torch.float64))
    assert lf.eigsh(one, k=1).eigenvalues.tolist() == [2.5]
    zero = lf.DenseOperator(torch.zeros(5, 5, dtype=torch.float64))
    r = lf.eigsh(zero, k=2)
    assert r.eigenvalues.abs().max() == 0 and r.residuals.max() == 0


def test_start_orthogonal_to_the_top_eigenvector() -> None:
    eigs = np.concatenate([[10.0, 5.0], np.linspace(-1, 1, 198)])
    op, A = operator_with_spectrum(eigs, seed=7)
    top = torch.as_tensor(np.linalg.eigh(A.numpy())[1][:, -1])
    v0 = torch.randn(200, dtype=torch.float64)
    v0 -= (v0 @ top) * top
    r = lf.eigsh(op, k=1, v0=v0, tol=1e-8)
    assert r.eigenvalues.item() == pytest.approx(10.0, rel=1e-8)


def test_warm_start_needs_fewer_products() -> None:
    eigs = SPECTRA["separated"]
    op, A = operator_with_spectrum(eigs, seed=8)
    cold = lf.eigsh(op, k=4, tol=1e-8, block_size=4)
    op2, _ = operator_with_spectrum(eigs + 1e-4 * RNG.standard_normal(200), seed=8)
    warm = lf.eigsh(op2, k=4, tol=1e-8, v0=cold.eigenvectors)
    fresh = lf.eigsh(op2, k=4, tol=1e-8, block_size=4)
    assert warm.converged.all() and warm.n_matvecs < fresh.n_matvecs


def test_large_p_with_householder_operator() -> None:
    gen = torch.Generator().manual_seed(0)
    eigs = torch.cat(
        [torch.tensor([50.0, 40.0, 30.0]), torch.rand(200_000, generator=gen) * 10 - 2]
    )
    op = HouseholderSpectrumOperator(eigs, seed=1)
    r = lf.eigsh(op, k=3, which="LA", tol=1e-8)
    assert r.converged.all()
    np.testing.assert_allclose(r.eigenvalues.numpy(), [50.0, 40.0, 30.0], rtol=1e-9)
    truth = op._reflect(torch.eye(3, 200_003, dtype=torch.float64))  # first 3 eigenvectors
    np.testing.assert_allclose(np.abs((r.eigenvectors @ truth.T).diagonal().numpy()), 1, atol=1e-8)


@pytest.mark.slow
def test_p_one_million_float32_against_scipy() -> None:
    sla = pytest.importorskip("scipy.sparse.linalg")
    gen = torch.Generator().manual_seed(0)
    eigs = torch.cat(
        [torch.tensor([100.0, 90, 80, 70, 60]), torch.rand(999_995, generator=gen) * 10]
    )
    op = HouseholderSpectrumOperator(eigs, seed=2, dtype=torch.float32)
    r = lf.eigsh(op, k=5, tol=1e-4)
    assert r.converged.all()
    L = sla.LinearOperator(
        (op.shape[0],) * 2,
        matvec=lambda x: op.matmat(torch.as_tensor(x, dtype=torch.float32)[None])[0].numpy(),
        dtype=np.float32,
    )
    ref = np.sort(sla.eigsh(L, k=5, which="LA", tol=1e-4)[0])[::-1]
    np.testing.assert_allclose(r.eigenvalues.numpy(), ref, rtol=1e-4)


def test_low_precision_basis_is_honest() -> None:
    eigs = SPECTRA["separated"]
    op, A = operator_with_spectrum(eigs, seed=9, dtype=torch.float32)
    r = lf.eigsh(op, k=2, tol=1e-3, basis_dtype=torch.bfloat16)
    want = expected(eigs, 2, "LA")
    scale = np.abs(eigs).max()
    V = r.eigenvectors.double().numpy()
    res = np.linalg.norm(V @ A.numpy() - r.eigenvalues.numpy()[:, None] * V, axis=1)
    np.testing.assert_allclose(r.residuals.numpy(), res, rtol=1e-2, atol=1e-5 * scale)
    for ok, got, w in zip(r.converged.tolist(), r.eigenvalues.tolist(), want):
        if ok:  # claimed converged: the eigenvalue is within the residual
            assert abs(got - w) <= 2e-3 * scale
    with pytest.raises(TypeError, match="basis"):
        lf.eigsh(operator_with_spectrum(eigs, seed=9)[0], k=1, basis_dtype=torch.bfloat16)


def test_budget_too_small_returns_unconverged_flags() -> None:
    op, A = operator_with_spectrum(SPECTRA["indefinite"], seed=10)
    r = lf.eigsh(op, k=3, tol=1e-12, max_matvecs=6)
    assert r.n_matvecs <= 6 + 3 and not r.converged.all()
    V = r.eigenvectors.numpy()
    res = np.linalg.norm(V @ A.numpy() - r.eigenvalues.numpy()[:, None] * V, axis=1)
    np.testing.assert_allclose(r.residuals.numpy(), res, rtol=1e-6, atol=1e-12)


def test_nan_operator_raises_without_hanging() -> None:
    M = torch.eye(20, dtype=torch.float64)
    M[3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        lf.eigsh(lf.DenseOperator(M, sym_tol=float("inf")), k=2)


def test_non_symmetric_operator_warns() -> None:
    g = torch.Generator().manual_seed(0)
    M = torch.randn(30, 30, generator=g, dtype=torch.float64)
    op = lf.DenseOperator(M, sym_tol=float("inf"))
    with pytest.warns(RuntimeWarning, match="symmetric"):
        lf.eigsh(op, k=2, max_matvecs=20)
    sym, _ = operator_with_spectrum(SPECTRA["indefinite"], seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lf.eigsh(sym, k=2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be"),
        ({"k": 201}, "k must be"),
        ({"k": 2, "which": "XX"}, "which"),
        ({"k": 2, "tol": 0.0}, "tol"),
        ({"k": 2, "tol": 1.5}, "tol"),
        ({"k": 2, "block_size": 0}, "block_size"),
        ({"k": 2, "v0": torch.zeros(3, dtype=torch.float64)}, "v0"),
        ({"k": 5, "max_basis": 6, "block_size": 2}, "max_basis"),
        ({"k": 2, "max_matvecs": 0}, "max_matvecs"),
    ],
)
def test_bad_input(kwargs, match) -> None:
    op, _ = operator_with_spectrum(SPECTRA["indefinite"], seed=12)
    with pytest.raises(ValueError, match=match):
        lf.eigsh(op, **kwargs)


def test_wanted_order_both_ends() -> None:
    theta = torch.tensor([0.0, 5.0, -3.0, 2.0, -1.0])
    assert theta[wanted_order(theta, "BE", 5)].tolist() == [5.0, -3.0, 2.0, -1.0, 0.0]


def test_model_hessian_against_the_dense_oracle() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    X, y = (
        torch.randn(40, 5, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=g),
    )
    dense = T.dense_hessian(model, "ce", [(X, y)]).numpy()
    eigs = np.linalg.eigvalsh(dense)
    H = lf.Hessian(model, "ce", (X, y), batch_size=16)
    for which, k in (("LA", 3), ("SA", 2), ("BE", 4)):
        r = lf.eigsh(H, k=k, which=which, tol=1e-8)
        check_result(r, dense, eigs, k, which, 1e-8)


def _tiny_lm():
    from landscape_fast import zoo

    model = zoo.tiny_transformer(vocab=8, d_model=4, n_heads=2, n_layers=1, seq_len=4, seed=0)
    model = model.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    X, y = zoo.token_data(n=12, seq_len=4, vocab=8, seed=0)
    return model, zoo.lm_loss, [(X[:8], y[:8]), (X[8:], y[8:])]


def _tiny_bn_cnn():
    from landscape_fast import zoo

    model = zoo.resnet20(depth=8, width=2, seed=0)
    X, y = zoo.cifar_like_data(n=16, seed=0, size=8)
    zoo.train(model, X, y, max_epochs=2, batch_size=8, seconds=30.0)
    return model.double().eval(), "ce", [(X[:8].double(), y[:8]), (X[8:].double(), y[8:])]


@pytest.mark.parametrize(
    "make", [_tiny_lm, pytest.param(_tiny_bn_cnn, marks=pytest.mark.slow)], ids=["lm", "bn_cnn"]
)
def test_zoo_model_hessians_against_the_dense_oracle(make) -> None:
    model, loss, batches = make()
    dense = T.dense_hessian(model, loss, batches).numpy()
    eigs = np.linalg.eigvalsh(dense)
    H = lf.Hessian(model, loss, batches)
    for which, k in (("LA", 4), ("SA", 2), ("BE", 2)):
        r = lf.eigsh(H, k=k, which=which, tol=1e-8)
        check_result(r, dense, eigs, k, which, 1e-8)


def test_host_basis_option_and_history_callback() -> None:
    op, A = operator_with_spectrum(SPECTRA["separated"], seed=13)
    seen = []
    r = lf.eigsh(op, k=2, tol=1e-8, basis_device="cpu", callback=seen.append)
    check_result(r, A.numpy(), SPECTRA["separated"], 2, "LA", 1e-8)
    assert seen and all(isinstance(x, RestartRecord) for x in seen)
