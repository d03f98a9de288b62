"""XTrace: the fast exchangeable estimator against a naive leave-one-out implementation,
coverage of its standard error, exactness, reproducibility, adaptivity and rank deficiency."""

import math

import pytest
import torch

from landscape_fast.linalg.estimate import stderr_target
from landscape_fast.linalg.probes import probe_block
from landscape_fast.linalg.xtrace import xtrace_estimate
from landscape_fast.operators import DenseOperator
from landscape_fast.testing import operator_with_spectrum

KINDS = ["rademacher", "gaussian"]


def decaying_operator(p: int = 60, seed: int = 1):
    """Geometric decay plus some negative eigenvalues."""
    pos, neg = p * 2 // 3, p - p * 2 // 3
    eigs = torch.cat([0.8 ** torch.arange(float(pos)), -0.5 * 0.7 ** torch.arange(float(neg))])
    return operator_with_spectrum(eigs, seed=seed)


def naive_xtrace(A: torch.Tensor, Om: torch.Tensor, improved: bool) -> torch.Tensor:
    """tr(Q_(i)ᵀAQ_(i)) + ω_iᵀ(I−Q_(i)Q_(i)ᵀ)A(I−Q_(i)Q_(i)ᵀ)ω_i for each column ω_i of Om."""
    p, m = Om.shape
    if improved:
        Om = Om * math.sqrt(p) / Om.norm(dim=0)
    Y = A @ Om
    out = []
    for i in range(m):
        Qi = torch.linalg.qr(Y[:, [j for j in range(m) if j != i]])[0]
        v = Om[:, i] - Qi @ (Qi.T @ Om[:, i])
        c2 = (p - m + 1) / (v @ v) if improved else 1.0
        out.append(torch.trace(Qi.T @ A @ Qi) + c2 * (v @ A @ v))
    return torch.stack(out)


def naive_jackknife_stderr(A: torch.Tensor, Om: torch.Tensor, improved: bool) -> float:
    """sqrt((m−1)/m Σ_j (T_(j) − mean)²), T_(j) = XTrace re-run without test vector j."""
    m = Om.shape[1]
    loo = torch.stack([
        naive_xtrace(A, Om[:, [k for k in range(m) if k != j]], improved).mean() for j in range(m)
    ])  # fmt: skip
    return math.sqrt((m - 1) / m * float(((loo - loo.mean()) ** 2).sum()))


@pytest.mark.parametrize("m", [2, 3, 12])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_matches_naive_leave_one_out(kind: str, m: int) -> None:
    op, A = decaying_operator()
    est = xtrace_estimate(op, num_matvecs=2 * m, seed=5, probe=kind)
    Om = probe_block(60, range(m), seed=5, stream="xtrace", kind=kind).T
    improved = kind == "gaussian"
    expected = naive_xtrace(A, Om, improved)
    torch.testing.assert_close(est.samples, expected, atol=1e-10, rtol=1e-10)
    assert est.value == pytest.approx(float(expected.mean()), abs=1e-10)
    assert est.stderr == pytest.approx(naive_jackknife_stderr(A, Om, improved), abs=1e-10)
    if m == 12:  # the jackknife is wider than the paper's s/sqrt(m) (as on every spectrum tried)
        assert est.stderr > float(expected.std()) / math.sqrt(m)
    assert est.n_matvecs == 2 * m == op.n_matvecs
    assert est.method == "xtrace" and est.quantity == "trace" and est.probe == kind


def slow_decay_operator(p: int = 100, seed: int = 2):
    """Eigenvalues 10/i: the paper's s/sqrt(m) covers only 96.5-98% of 200 seeds at ±3 SE."""
    return operator_with_spectrum(10.0 / torch.arange(1.0, p + 1.0), seed=seed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("operator", [decaying_operator, slow_decay_operator])
def test_coverage_over_seeds(kind: str, operator) -> None:
    # The jackknife standard error: ±3 SE must cover the trace in >= 99% of 200 seeds (the
    # paper's s/sqrt(m) covers 96.5-98.5% on these operators). Unbiasedness: the mean over
    # seeds is within its error.
    op, A = operator()
    tr = float(A.trace())
    vals, z = [], []
    for seed in range(200):
        est = xtrace_estimate(op, num_matvecs=40, seed=seed, probe=kind)
        vals.append(est.value)
        z.append((est.value - tr) / est.stderr)
    z = torch.tensor(z)
    assert float((z.abs() <= 3).double().mean()) >= 0.99
    vals = torch.tensor(vals)
    assert abs(float(vals.mean()) - tr) <= 4 * float(vals.std()) / math.sqrt(200)
    # Conservative (Efron-Stein): the mean SE is 1.9-2.5 times the RMS error here.
    rms = float(((vals - tr) ** 2).mean().sqrt())
    mean_se = float(((vals - tr).abs() / z.abs()).mean())
    assert rms <= mean_se <= 3 * rms


@pytest.mark.parametrize("kind", KINDS)
def test_exact_with_budget_at_least_p(kind: str) -> None:
    op, A = operator_with_spectrum(torch.linspace(-3.0, 5.0, 10), seed=2)
    est = xtrace_estimate(op, num_matvecs=20, seed=0, probe=kind)
    assert est.value == pytest.approx(float(A.trace()), abs=1e-12)
    assert est.stderr == 0.0 and est.n_matvecs == 10 and "exact" in est.notes[0]


def test_block_size_independence_and_seeds() -> None:
    op, _ = decaying_operator()
    runs = [xtrace_estimate(op, num_matvecs=30, seed=3, block_size=b) for b in (1, 8, 5)]
    for r in runs[1:]:
        torch.testing.assert_close(r.samples, runs[0].samples, atol=1e-12, rtol=1e-12)
    again = xtrace_estimate(op, num_matvecs=30, seed=3, block_size=8)
    assert torch.equal(again.samples, runs[1].samples)
    other = xtrace_estimate(op, num_matvecs=30, seed=4)
    assert other.value != runs[0].value


@pytest.mark.parametrize("kind", KINDS)
def test_adaptive_reaches_target_and_reuses_products(kind: str) -> None:
    op, A = decaying_operator(p=200, seed=3)
    target = stderr_target(1e-3, None)
    ests = [xtrace_estimate(op, target=target, seed=2, probe=kind, block_size=b) for b in (1, 8)]
    est = ests[0]
    assert est.converged and est.stderr <= est.target_stderr == pytest.approx(1e-3 * est.value)
    torch.testing.assert_close(ests[1].samples, est.samples, atol=1e-12, rtol=1e-12)
    m = est.samples.numel()
    assert est.n_matvecs == 2 * m and m >= 16 and m & (m - 1) == 0  # a doubling level
    # The nested sketch: a fixed budget of the same size gives the identical numbers.
    fixed = xtrace_estimate(op, num_matvecs=2 * m, seed=2, probe=kind, block_size=1)
    assert torch.equal(fixed.samples, est.samples)
    assert abs(est.value - float(A.trace())) <= 4 * est.stderr


def test_adaptive_budget_too_small_is_reported() -> None:
    op, _ = decaying_operator(p=200, seed=3)
    est = xtrace_estimate(op, target=stderr_target(1e-9, None), max_matvecs=100)
    assert not est.converged and est.n_matvecs <= 100
    assert any("max_matvecs=100" in n for n in est.notes)
    # A small operator: the doubling switches to the exact trace when it is cheaper.
    small, A = operator_with_spectrum(torch.linspace(1.0, 2.0, 30), seed=0)
    est = xtrace_estimate(small, target=stderr_target(1e-12, None))
    assert est.converged and est.value == pytest.approx(float(A.trace()), abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_rank_deficient_operator(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(50, 5, dtype=torch.float64, generator=g))[0]
    L = U @ torch.diag(torch.tensor([5.0, 3.0, -2.0, 1.0, 0.5], dtype=torch.float64)) @ U.T
    op = DenseOperator((L + L.T) / 2)
    est = xtrace_estimate(op, num_matvecs=40, seed=0, probe=kind)  # m = 20 > rank 5
    assert math.isfinite(est.value) and math.isfinite(est.stderr)
    assert est.value == pytest.approx(float(L.trace()), abs=1e-10)
    assert any("rank deficient" in n for n in est.notes)
    zero = xtrace_estimate(DenseOperator(torch.zeros(50, 50, dtype=torch.float64)), num_matvecs=20)
    assert zero.value == 0.0 and zero.stderr == 0.0


def test_nan_product_and_bad_arguments() -> None:
    M = torch.eye(30, dtype=torch.float64)
    M[3, 3] = float("nan")
    with pytest.raises(FloatingPointError, match=r"xtrace: test vector \[0, 1"):
        xtrace_estimate(DenseOperator(M, sym_tol=math.inf), num_matvecs=20)
    op, _ = decaying_operator()
    with pytest.raises(ValueError, match="num_matvecs >= 4"):
        xtrace_estimate(op, num_matvecs=3)
    with pytest.raises(ValueError, match="not both"):
        xtrace_estimate(op, num_matvecs=10, target=stderr_target(0.1, None))
    with pytest.raises(ValueError, match="traces only"):
        xtrace_estimate(op, num_matvecs=10, quantity="frobenius_norm_sq")
