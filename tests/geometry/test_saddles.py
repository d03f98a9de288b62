"""Saddle index on operators with known spectra."""

import numpy as np
import pytest
import torch

import landscape_fast as lf
from landscape_fast.testing import operator_with_spectrum

EIGS = np.concatenate([[-3.0, -2.0, -2.0, -0.5], np.zeros(10), np.linspace(0.5, 6.0, 26)])


def test_exact_on_a_diagonal_operator() -> None:
    H = lf.DenseOperator(torch.diag(torch.tensor(EIGS)))
    s = lf.saddle_index(H, num_steps=40)
    assert s.negative_count.value == pytest.approx(4.0, abs=1e-9)
    assert s.negative_fraction.value == pytest.approx(4 / 40, abs=1e-12)
    assert s.negative_trace.value == pytest.approx(-7.5, abs=1e-9)
    assert s.lambda_min == pytest.approx(-3.0, abs=1e-8) and s.strict
    assert "negative curvature" in s.describe()


def test_within_error_bars_on_a_rotated_operator_and_density_reuse() -> None:
    op, _ = operator_with_spectrum(EIGS, seed=3)
    d = lf.spectral_density(op, num_probes=12, num_steps=20, seed=1)
    before = op.n_matvecs
    s = lf.saddle_index(op, density=d, seed=1)
    assert op.n_matvecs - before == s.n_matvecs  # only the eigensolver ran
    for est, exact in ((s.negative_count, 4.0), (s.negative_trace, -7.5)):
        assert abs(est.value - exact) <= 3 * est.stderr, est.describe()
    assert s.lambda_min == pytest.approx(-3.0, abs=1e-6)


def test_no_negative_curvature_is_not_called_a_minimum() -> None:
    op, _ = operator_with_spectrum(np.concatenate([np.zeros(5), np.linspace(1, 2, 15)]), seed=0)
    s = lf.saddle_index(op, num_steps=10)
    assert not s.strict and s.negative_count.value == pytest.approx(0.0, abs=1e-9)
    assert any("does not show the point is a minimum" in n for n in s.notes)
    with pytest.raises(ValueError, match="eps"):
        lf.saddle_index(op, eps=-1.0)
