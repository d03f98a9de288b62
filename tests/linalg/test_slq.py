"""Lockstep block Lanczos and ``spectral_density``: equivalence, reproducibility, bad input."""

import math

import pytest
import torch

import landscape_fast as lf
from landscape_fast.linalg.lanczos import lanczos_lockstep
from landscape_fast.linalg.probes import probe_block
from landscape_fast.linalg.slq import spectral_density
from landscape_fast.operators.base import CurvatureOperator
from landscape_fast.testing import operator_with_spectrum

F64 = torch.float64


class _Matrix(CurvatureOperator):
    """Multiplies by any (possibly non-symmetric) matrix: ``V -> V M``."""

    def __init__(self, M: torch.Tensor) -> None:
        super().__init__(M.shape[0], M.dtype, M.device)
        self.M = M

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.M


class _NanAt(CurvatureOperator):
    """A symmetric matrix whose product of block row ``row`` at call ``call`` is NaN."""

    def __init__(self, A: torch.Tensor, row: int, call: int) -> None:
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A, self.row, self.call, self.calls = A, row, call, 0

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = V @ self.A
        if self.calls == self.call:
            out[self.row, 0] = math.nan
        return out


def _spectrum(p: int = 60, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [torch.rand(p - 3, generator=g, dtype=F64) * 3 - 1, torch.tensor([5.0, 8, 12])]
    )


def test_lockstep_equals_single_vector_lanczos_per_probe() -> None:
    op, _ = operator_with_spectrum(_spectrum(), seed=1)
    V0 = probe_block(60, range(5), seed=3, stream="slq")
    res = lanczos_lockstep(op, V0, 25)
    assert res.n_matvecs == 5 * 25 and not bool(res.breakdown.any())
    for l in range(5):
        ref = lf.lanczos(op, 25, v0=V0[l])
        torch.testing.assert_close(res.alpha[l], ref.alpha, rtol=0, atol=1e-10)
        torch.testing.assert_close(res.beta[l], ref.beta, rtol=0, atol=1e-10)
        torch.testing.assert_close(res.tridiagonal(l), ref.tridiagonal(), rtol=0, atol=1e-10)


def test_lockstep_breakdown_drops_a_probe_and_keeps_the_others() -> None:
    # Probe 0 lies in a 3-dimensional invariant subspace, probe 1 does not.
    A = torch.diag(torch.arange(1.0, 21.0, dtype=F64))
    op = lf.DenseOperator(A)
    V0 = torch.zeros(2, 20, dtype=F64)
    V0[0, :3] = 1.0
    V0[1] = 1.0
    res = lanczos_lockstep(op, V0, 10)
    assert res.steps.tolist() == [3, 10] and res.breakdown.tolist() == [True, False]
    assert res.beta[0, 2] == 0.0 and res.n_matvecs == 13
    ritz = torch.linalg.eigvalsh(res.tridiagonal(0))
    torch.testing.assert_close(ritz, torch.tensor([1.0, 2, 3], dtype=F64), rtol=0, atol=1e-12)


def test_lockstep_deflation_keeps_the_deflated_directions_out() -> None:
    eigs = torch.cat([torch.linspace(0, 1, 47, dtype=F64), torch.tensor([10.0, 20, 30])])
    op, A = operator_with_spectrum(eigs, seed=2)
    evals, evecs = torch.linalg.eigh(A)
    D = evecs[:, -3:].T.contiguous()
    res = lanczos_lockstep(op, probe_block(50, range(3), seed=0, stream="slq"), 30, deflate=D)
    for l in range(3):
        ritz = torch.linalg.eigvalsh(res.tridiagonal(l))
        assert float(ritz.max()) <= 1.0 + 1e-10 and float(ritz.min()) >= -1e-10


def test_block_sizes_agree_and_the_same_seed_repeats() -> None:
    op, _ = operator_with_spectrum(_spectrum(), seed=1)
    ref = spectral_density(op, num_probes=7, num_steps=20, seed=5)
    again = spectral_density(op, num_probes=7, num_steps=20, seed=5)
    assert torch.equal(ref.nodes, again.nodes) and torch.equal(ref.weights, again.weights)
    for bs in (1, 3):
        d = spectral_density(op, num_probes=7, num_steps=20, seed=5, block_size=bs)
        torch.testing.assert_close(d.nodes, ref.nodes, rtol=0, atol=1e-10)
        torch.testing.assert_close(d.weights, ref.weights, rtol=0, atol=1e-10)
        assert d.n_matvecs == ref.n_matvecs == 7 * 20
    other = spectral_density(op, num_probes=7, num_steps=20, seed=6)
    assert not torch.allclose(other.weights, ref.weights)


def test_float32_operator_agrees_loosely_with_float64() -> None:
    eigs = _spectrum(100)
    op64, _ = operator_with_spectrum(eigs, seed=1)
    op32, _ = operator_with_spectrum(eigs, seed=1, dtype=torch.float32)
    d64 = spectral_density(op64, num_probes=4, num_steps=30, seed=0)
    d32 = spectral_density(op32, num_probes=4, num_steps=30, seed=0)
    for j in (1, 2, 3):
        a, b = d64.moment(j).value, d32.moment(j).value
        assert abs(a - b) <= 1e-4 * float((eigs.abs() ** j).sum())
    grid, phi64 = d64.density()
    _, phi32 = d32.density(grid=grid, sigma=d64.default_sigma())
    assert float((phi64 - phi32).abs().max()) < 0.02 * float(phi64.max())
    # A bfloat16 basis passes the default float32 symmetry check and stays close.
    dbf = spectral_density(op32, num_probes=4, num_steps=30, seed=0, basis_dtype=torch.bfloat16)
    assert abs(dbf.moment(2).value - d64.moment(2).value) < 0.01 * d64.moment(2).value


def test_gaussian_probes_and_notes() -> None:
    op, _ = operator_with_spectrum(_spectrum(40), seed=0)
    d = spectral_density(op, num_probes=4, num_steps=10, probe="gaussian")
    assert d.probe == "gaussian" and d.moment(1).probe == "gaussian"
    torch.testing.assert_close(d.weights.sum(1), torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="probe must be one of"):
        spectral_density(op, probe="uniform")


def test_num_steps_above_p_is_capped_with_a_warning() -> None:
    op, _ = operator_with_spectrum(_spectrum(20), seed=0)
    with pytest.warns(UserWarning, match="exceeds the dimension p=20"):
        d = spectral_density(op, num_probes=2, num_steps=50)
    assert d.num_steps == 20 and int(d.steps.max()) <= 20
    assert any("capped" in n for n in d.notes)


def test_one_probe_warns_and_reports_nan_stderr() -> None:
    op, _ = operator_with_spectrum(_spectrum(20), seed=0)
    with pytest.warns(UserWarning, match="num_probes=1 gives no standard error"):
        d = spectral_density(op, num_probes=1, num_steps=10)
    with pytest.warns(UserWarning, match="stderr is nan"):
        est = d.moment(1)
    assert math.isnan(est.stderr) and math.isfinite(est.value)
    with pytest.raises(ValueError, match="num_probes must be >= 1"):
        spectral_density(op, num_probes=0)
    with pytest.raises(ValueError, match="block_size"):
        spectral_density(op, block_size=0)
    with pytest.raises(ValueError, match="refine"):
        spectral_density(op, refine=20)


def test_nonsymmetric_operator_raises() -> None:
    g = torch.Generator().manual_seed(0)
    S = torch.randn(30, 30, generator=g, dtype=F64)
    M = (S + S.T) / 2 + 0.05 * torch.randn(30, 30, generator=g, dtype=F64)
    with pytest.raises(ValueError, match="not symmetric"):
        spectral_density(_Matrix(M), num_probes=3, num_steps=10)
    # Symmetric to float32 rounding is fine for a float32 operator.
    sym32 = ((S + S.T) / 2).float()
    sym32 = sym32 + 1e-6 * torch.randn(30, 30, generator=g)
    spectral_density(_Matrix(sym32), num_probes=3, num_steps=10)


def test_nan_product_names_the_probe_and_the_step() -> None:
    A = torch.diag(torch.arange(1.0, 31.0, dtype=F64))
    op = _NanAt(A, row=3, call=5)
    with pytest.raises(FloatingPointError, match="probe 3 at Lanczos step 5 is not finite"):
        spectral_density(op, num_probes=6, num_steps=10)
    # Blocks of 2 (10 calls each): the global probe index is reported (block 2, row 1 = probe 5).
    op = _NanAt(A, row=1, call=2 * 10 + 2)
    with pytest.raises(FloatingPointError, match="probe 5 at Lanczos step 2"):
        spectral_density(op, num_probes=6, num_steps=10, block_size=2)


def test_refine_gives_exact_point_masses_and_counts_matvecs() -> None:
    eigs = torch.cat([torch.linspace(0, 1, 197, dtype=F64), torch.tensor([10.0, 20, 30])])
    op, _ = operator_with_spectrum(eigs, seed=3)
    d = spectral_density(op, num_probes=4, num_steps=30, refine=3, seed=1)
    assert d.refined is not None and d.num_deflated == 3
    torch.testing.assert_close(
        torch.sort(d.point_masses).values,
        torch.tensor([10.0, 20, 30], dtype=F64),
        rtol=0,
        atol=1e-8,
    )
    assert d.n_matvecs == d.refined.n_matvecs + 4 * 30
    # SLQ ran on the complement: no node above the bulk.
    assert float(d.nodes[d.mask].max()) <= 1.0 + 1e-8
    torch.testing.assert_close(d.moment(0).value, 200.0)
    est = d.moment(1)
    assert abs(est.value - float(eigs.sum())) <= 4 * est.stderr + 1e-8


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_every_backend_gives_the_same_numbers(monkeypatch, backend) -> None:
    from landscape_fast import _backend

    reason = _backend.BACKENDS[backend].unavailable_reason()
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable: {reason}")
    op, _ = operator_with_spectrum(_spectrum(40), seed=1, dtype=torch.float32)
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    ref = spectral_density(op, num_probes=3, num_steps=12, seed=2)
    tr_ref = lf.trace(op, "hutch++", num_matvecs=30, seed=2)
    monkeypatch.setenv(_backend.ENV_VAR, backend)
    d = spectral_density(op, num_probes=3, num_steps=12, seed=2)
    tr = lf.trace(op, "hutch++", num_matvecs=30, seed=2)
    torch.testing.assert_close(d.nodes, ref.nodes, rtol=0, atol=1e-4)
    torch.testing.assert_close(d.weights, ref.weights, rtol=0, atol=1e-4)
    assert tr.value == pytest.approx(tr_ref.value, rel=1e-5)


def test_local_reorthogonalization_keeps_moments_and_the_density() -> None:
    g = torch.Generator().manual_seed(3)
    eigs = torch.cat([torch.rand(196, generator=g, dtype=F64), torch.tensor([8.0, 12, 20, 30])])
    op, _ = operator_with_spectrum(eigs, seed=2)
    full = spectral_density(op, num_probes=4, num_steps=60, seed=1)
    local = spectral_density(op, num_probes=4, num_steps=60, seed=1, reorthogonalize=False)
    for j in range(5):  # low moments are insensitive to the loss of orthogonality
        assert local.moment(j).value == pytest.approx(full.moment(j).value, rel=1e-8)
    grid = torch.linspace(-1, 31, 3000, dtype=F64)
    _, a = full.density(grid, sigma=0.2)
    _, b = local.density(grid, sigma=0.2)
    assert float(torch.trapezoid((a - b).abs(), grid)) < 0.05  # L1 distance of the densities
    assert any("reorthogonalization" in n for n in local.notes)
    with pytest.raises(ValueError, match="not symmetric"):
        M = torch.randn(30, 30, dtype=F64, generator=g)
        spectral_density(_Matrix(M), num_probes=2, num_steps=10, reorthogonalize=False)
    with pytest.raises(ValueError, match="return_basis"):
        lanczos_lockstep(op, probe_block(200, range(2), seed=0, stream="slq"), 5,
                         return_basis=True, reorthogonalize=False)  # fmt: skip
