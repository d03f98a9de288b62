"""Condition numbers, gaps and outlier counts for indefinite, rank-deficient spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import landscape_fast as lf
from landscape_fast.testing import operator_with_spectrum


def test_gaps_and_outliers() -> None:
    top = [0.3, 9.0, 7.5, 8.0, 0.4, 0.2]
    assert lf.spectral_gaps(top).tolist() == pytest.approx([1.0, 0.5, 7.1, 0.1, 0.1])
    assert lf.count_outliers(top) == 3
    assert lf.count_outliers([5.0]) == 0
    # decades: 1000, 100, 10, 9, 8 -> the largest ratio is after the first
    assert lf.count_outliers([1000.0, 100.0, 10.0, 9.0, 8.0], relative=True) == 1
    assert lf.count_outliers([1000.0, 100.0, 10.0, 9.0, 8.0]) == 1
    assert lf.count_outliers([3.0, -1.0], relative=True) == 0


def test_condition_numbers_of_an_indefinite_rank_deficient_spectrum() -> None:
    top = np.array([9.0, 8.0, 7.5, 0.4, 0.3, 0.0, 0.0])
    c = lf.condition_numbers(top, lambda_min=-0.45, ks=(3, 5, 6, 30), damping=0.5)
    assert c.kappa == {3: pytest.approx(1.2), 5: pytest.approx(30.0)}
    assert c.negative_ratio == pytest.approx(0.05)
    assert c.raw is None and c.damped == pytest.approx(9.5 / 0.05)
    assert any("kappa_6" in n for n in c.notes) and any("kappa_30" in n for n in c.notes)
    assert any("raw kappa" in n for n in c.notes)


def test_positive_definite_keeps_the_raw_kappa() -> None:
    c = lf.condition_numbers([4.0, 2.0], lambda_min=0.5, ks=(2,))
    assert c.raw == pytest.approx(8.0) and c.negative_ratio == 0.0


def test_bad_damping_and_input() -> None:
    with pytest.raises(ValueError, match="damping"):
        lf.condition_numbers([1.0], lambda_min=-1.0, damping=0.5)
    with pytest.raises(ValueError, match="no eigenvalues"):
        lf.spectral_gaps([])
    with pytest.raises(ValueError, match="finite"):
        lf.count_outliers([1.0, float("nan")])
    c = lf.condition_numbers([1.0], damping=0.1)
    assert c.damped is None and "damped kappa needs lambda_min" in c.notes


def test_from_eigsh_on_an_explicit_operator() -> None:
    rng = np.random.default_rng(0)
    eigs = np.concatenate([[12.0, 11.0, 10.5], rng.uniform(-0.2, 0.5, 97)])
    op, _ = operator_with_spectrum(eigs, seed=0)
    top = lf.eigsh(op, k=8, which="LA", tol=1e-9)
    bottom = lf.eigsh(op, k=1, which="SA", tol=1e-9)
    assert lf.count_outliers(top.eigenvalues) == 3
    c = lf.condition_numbers(top.eigenvalues, lambda_min=bottom.eigenvalues.item(), ks=(3,))
    assert c.kappa[3] == pytest.approx(12.0 / 10.5)
    assert c.negative_ratio == pytest.approx(-eigs.min() / 12.0, rel=1e-8)
    assert isinstance(torch.as_tensor(top.eigenvalues), torch.Tensor)
