"""Effective dimension and the valid eigenvalue-count bounds (THEORY.md C8) on exact spectra."""

import numpy as np
import pytest
import torch

import landscape_fast as lf
from landscape_fast.testing import operator_with_spectrum

EIGS = np.concatenate([[30.0, 20.0, 12.0, 8.0], np.linspace(-2.0, 3.0, 56)])


@pytest.fixture(scope="module")
def op() -> lf.DenseOperator:
    return operator_with_spectrum(EIGS, seed=4)[0]


def test_effective_dimension_covers_the_exact_sum(op) -> None:
    z = 5.0
    pos = EIGS[EIGS > 0]
    truth = float(np.sum(pos / (pos + z)))
    est = lf.effective_dimension(op, z, num_probes=10, num_steps=40, seed=1)
    assert abs(est.value - truth) <= 3 * est.stderr
    density = lf.spectral_density(op, num_probes=10, num_steps=40, seed=1)
    again = lf.effective_dimension(density, z)  # reuses the density: no products
    assert again.value == est.value and op.n_matvecs == 2 * 10 * 40


@pytest.mark.parametrize("T", [2.5, 5.0, 10.0, 25.0])
def test_valid_count_bounds_hold_on_an_indefinite_spectrum(op, T) -> None:
    fro = lf.eigenvalue_count_bound(op, T, form="frobenius", rtol=0.02, seed=2)
    assert fro.conservative_bound >= np.sum(np.abs(EIGS) >= T)
    assert fro.bound == pytest.approx(float(np.sum(EIGS**2)) / T**2, rel=0.1)
    pos = lf.eigenvalue_count_bound(op, T, form="positive_trace", num_steps=60, seed=2)
    assert pos.conservative_bound >= np.sum(EIGS >= T)
    assert pos.bound == pytest.approx(float(EIGS[EIGS > 0].sum()) / T, rel=0.15)
    assert "#{λ >= T}" in pos.describe()


def test_the_seeds_markov_form_is_refused_for_an_indefinite_operator() -> None:
    # THEORY.md C8 counterexample: k_T = 2 > tr H / T = 0.2
    H = lf.DenseOperator(torch.diag(torch.tensor([10.0, 10.0, -19.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        lf.eigenvalue_count_bound(H, 5.0, form="psd_trace")
    frob = lf.eigenvalue_count_bound(H, 5.0, form="frobenius", num_matvecs=30, seed=0)
    assert frob.conservative_bound >= 2


def test_psd_trace_form_on_a_psd_operator() -> None:
    eigs = np.concatenate([[9.0, 7.0], np.linspace(0.0, 1.0, 38)])
    op = operator_with_spectrum(eigs, seed=5)[0]
    b = lf.eigenvalue_count_bound(op, 2.0, form="psd_trace", assume_psd=True, seed=0)
    assert b.conservative_bound >= 2 and b.bound == pytest.approx(eigs.sum() / 2.0, rel=0.05)


def test_bad_input() -> None:
    op = operator_with_spectrum(EIGS, seed=4)[0]
    with pytest.raises(ValueError, match="form must be one of"):
        lf.eigenvalue_count_bound(op, 1.0, form="markov")
    with pytest.raises(ValueError, match="threshold must be positive"):
        lf.eigenvalue_count_bound(op, 0.0)
    with pytest.raises(ValueError, match="z must be positive"):
        lf.effective_dimension(op, -1.0, num_steps=5)
