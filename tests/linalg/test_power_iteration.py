"""Power iteration with deflation (PyHessian's algorithm) against numpy.linalg.eigh."""

import numpy as np
import pytest
import torch

import landscape_fast as lf
from landscape_fast.testing import operator_with_spectrum


def test_top_k_by_magnitude_with_true_residuals() -> None:
    eigs = np.concatenate([[9.0, -6.0, 4.0], np.linspace(-1.0, 1.0, 97)])
    op, A = operator_with_spectrum(eigs, seed=1)
    A = A.numpy()
    r = lf.power_iteration(op, k=3, tol=1e-14, max_iter=500, residual_tol=1e-5)
    np.testing.assert_allclose(r.eigenvalues.numpy(), [9.0, -6.0, 4.0], rtol=1e-8)
    assert r.converged.all()
    V = r.eigenvectors.numpy()
    true_res = np.linalg.norm(V @ A - r.eigenvalues.numpy()[:, None] * V, axis=1)
    np.testing.assert_allclose(r.residuals.numpy(), true_res, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(V @ V.T, np.eye(3), atol=1e-6)
    assert r.n_matvecs == sum(len(h) for h in r.history) == op.n_matvecs


def test_pyhessian_default_rule_stops_early_and_says_so() -> None:
    # Slow decay 1.0 vs 0.98: the relative-change rule (tol 1e-3) stops long before the
    # eigenvector is accurate; the residual tells the truth.
    eigs = np.concatenate([[1.0, 0.98], np.linspace(0.0, 0.9, 198)])
    op, _ = operator_with_spectrum(eigs, seed=2)
    r = lf.power_iteration(op, k=1, residual_tol=1e-6)
    assert r.n_matvecs < 100
    assert not r.converged[0] and r.residuals[0] > 1e-3


def test_null_operator_and_errors() -> None:
    op = lf.DenseOperator(torch.zeros(4, 4, dtype=torch.float64))
    r = lf.power_iteration(op, k=1)
    assert r.eigenvalues[0] == 0 and r.residuals[0] == 0
    with pytest.raises(ValueError, match="k must be"):
        lf.power_iteration(op, k=5)
    with pytest.raises(ValueError, match="max_iter"):
        lf.power_iteration(op, max_iter=0)
