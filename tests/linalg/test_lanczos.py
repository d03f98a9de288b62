"""Lanczos with full reorthogonalization against numpy.linalg.eigh on explicit spectra."""

import numpy as np
import pytest
import torch

import landscape_fast as lf
from landscape_fast.testing import operator_with_spectrum

F64 = torch.float64


def _operator(eigs, seed: int = 0, dtype=F64) -> tuple[lf.DenseOperator, np.ndarray]:
    op, A = operator_with_spectrum(eigs, seed=seed, dtype=dtype)
    return op, A.numpy()


def test_full_run_recovers_the_whole_indefinite_spectrum() -> None:
    eigs = np.concatenate([np.linspace(-3, -0.1, 20), np.linspace(0.2, 5, 40)])
    op, A = _operator(eigs)
    res = lf.lanczos(op, num_steps=60, seed=1, return_basis=True)
    assert res.num_steps == 60 and res.n_matvecs == 60 and op.n_matvecs == 60
    ritz = np.linalg.eigvalsh(res.tridiagonal().numpy())
    np.testing.assert_allclose(ritz, np.linalg.eigh(A)[0], atol=1e-10)
    Q = res.basis.numpy()
    np.testing.assert_allclose(Q @ Q.T, np.eye(60), atol=1e-12)  # full reorthogonalization
    np.testing.assert_allclose(Q @ A @ Q.T, res.tridiagonal().numpy(), atol=1e-10)


def test_extreme_ritz_values_converge_fast_with_a_gap() -> None:
    eigs = np.concatenate([[10.0, 8.0], np.linspace(0.0, 1.0, 298)])
    op, _ = _operator(eigs, seed=2)
    res = lf.lanczos(op, num_steps=30, seed=0)
    ritz = np.linalg.eigvalsh(res.tridiagonal().numpy())
    np.testing.assert_allclose(ritz[-2:], [8.0, 10.0], rtol=1e-10)
    assert not res.breakdown


def test_breakdown_on_an_invariant_subspace() -> None:
    eigs = np.zeros(50)
    eigs[:3] = [4.0, -2.0, 1.0]  # rank 3: the Krylov space of a random v0 has dimension 4
    op, _ = _operator(eigs, seed=3)
    res = lf.lanczos(op, num_steps=20, seed=0)
    assert res.breakdown and res.num_steps == 4 and res.beta[-1] == 0
    ritz = np.linalg.eigvalsh(res.tridiagonal().numpy())
    np.testing.assert_allclose(ritz, [-2.0, 0.0, 1.0, 4.0], atol=1e-10)


@pytest.mark.parametrize("basis_dtype", [None, torch.bfloat16])
def test_float32_operator_and_low_precision_basis(basis_dtype) -> None:
    eigs = np.concatenate([[6.0], np.linspace(-1.0, 1.0, 199)])
    op, _ = _operator(eigs, seed=4, dtype=torch.float32)
    res = lf.lanczos(op, num_steps=40, seed=0, basis_dtype=basis_dtype, return_basis=True)
    assert res.basis.dtype == (basis_dtype or torch.float32)
    top = np.linalg.eigvalsh(res.tridiagonal().numpy())[-1]
    # Measured relative errors: 1.6e-8 (float32 basis), 9.2e-5 (bfloat16 basis, which rounds
    # every Lanczos vector to 8 bits of mantissa); bounds leave ~10x margin.
    assert abs(top - 6.0) <= (1e-7 if basis_dtype is None else 1e-3) * 6.0


def test_reproducible_and_start_vector() -> None:
    op, _ = _operator(np.linspace(-1, 1, 30), seed=5)
    a, b = lf.lanczos(op, 10, seed=7), lf.lanczos(op, 10, seed=7)
    assert torch.equal(a.alpha, b.alpha) and torch.equal(a.beta, b.beta)
    e1 = torch.zeros(30, dtype=F64)
    e1[0] = 5.0
    res = lf.lanczos(op, 3, v0=e1, return_basis=True)
    torch.testing.assert_close(res.basis[0], e1 / 5.0)
    assert lf.lanczos(op, 100).num_steps == 30  # clipped to p


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": 3, "v0": torch.ones(4, dtype=F64)}, "shape"),
        ({"num_steps": 3, "v0": torch.zeros(5, dtype=F64)}, "zero"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    op, _ = _operator(np.arange(5.0))
    with pytest.raises(ValueError, match=match):
        lf.lanczos(op, **kwargs)


class _NoisyProducts(lf.CurvatureOperator):
    """A symmetric matrix whose products carry rounding-like noise of size 1e-12·‖H‖ (an
    autograd HVP is symmetric only up to such noise)."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A.shape[0], A.dtype, A.device)
        self.A = A
        self.gen = torch.Generator().manual_seed(1)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(V.shape, generator=self.gen, dtype=V.dtype)
        return V @ self.A + 1e-12 * noise * V.norm(dim=1, keepdim=True)


def test_symmetry_check_scales_with_the_operator_norm_not_the_local_coefficients() -> None:
    # Eigenvalues graded down to 1e-11: once Lanczos has found the large ones, its
    # coefficients are ~1e-10 while the products' noise is ~1e-12 (relative to ‖H‖ = 1). A
    # check against the local scale alone called this operator non-symmetric.
    values = torch.logspace(0, -11, 40, dtype=torch.float64)
    op = _NoisyProducts(operator_with_spectrum(values, seed=0)[1])
    res = lf.lanczos(op, num_steps=30)
    assert res.alpha.numel() == 30 and not res.breakdown
    skew = torch.randn(40, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.raises(ValueError, match="not symmetric"):
        lf.lanczos(lf.DenseOperator(torch.eye(40, dtype=torch.float64) + 1e-3 * skew), num_steps=20)
