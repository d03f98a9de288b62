"""Trace and Frobenius-norm estimators against exact spectra: coverage, cost, reproducibility."""

import math

import numpy as np
import pytest
import torch

import landscape_fast as lf
from landscape_fast.linalg.estimate import first_stop
from landscape_fast.testing import operator_with_spectrum

F64 = torch.float64
# Indefinite, decaying: 40 positive eigenvalues 10/i and 20 negative ones.
EIGS = np.concatenate([10.0 / np.arange(1, 41), -np.linspace(0.05, 1.0, 20)])


@pytest.fixture(scope="module")
def indefinite() -> lf.DenseOperator:
    return operator_with_spectrum(EIGS, seed=3)[0]


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize(
    ("method", "quantity", "truth", "budget"),
    [
        ("hutchinson", lf.trace, EIGS.sum(), 100),
        ("hutch++", lf.trace, EIGS.sum(), 150),
        ("hutchinson", lf.frobenius_norm_sq, (EIGS**2).sum(), 300),
        ("hutch++", lf.frobenius_norm_sq, (EIGS**2).sum(), 150),
    ],
)
def test_truth_within_three_standard_errors_in_99_percent_of_200_seeds(
    indefinite, method, quantity, truth, budget, probe
) -> None:
    z = []
    for seed in range(200):
        est = quantity(indefinite, method, num_matvecs=budget, seed=seed, probe=probe)
        assert est.n_matvecs == budget and est.converged
        z.append(abs(est.value - truth) / est.stderr)
    assert np.mean(np.array(z) <= 3) >= 0.99
    assert np.mean(np.array(z) <= 1) < 0.9  # the error bars are not absurdly wide either


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_adaptive_stop_reaches_the_target_and_covers_the_truth(indefinite, method) -> None:
    truth, z = EIGS.sum(), []
    for seed in range(100):
        est = lf.trace(indefinite, method, rtol=0.05, seed=seed)
        assert est.converged and est.stderr <= 0.05 * abs(est.value) + 1e-12
        assert est.target_stderr == pytest.approx(0.05 * abs(est.value))
        z.append(abs(est.value - truth) / est.stderr)
    assert np.mean(np.array(z) <= 3) >= 0.98


def test_hutchpp_needs_fewer_products_than_hutchinson_on_a_decaying_spectrum() -> None:
    op, _ = operator_with_spectrum(1.0 / np.arange(1, 301) ** 2, seed=0)
    cost = {
        m: np.median([lf.trace(op, m, rtol=0.01, seed=s).n_matvecs for s in range(5)])
        for m in ("hutchinson", "hutch++", "xtrace")
    }
    assert cost["hutch++"] <= 0.5 * cost["hutchinson"], cost
    assert cost["xtrace"] <= 0.5 * cost["hutchinson"], cost


@pytest.mark.parametrize("quantity", ["TRACE", "FROBENIUS"])
def test_reprojected_pilot_samples_equal_freshly_projected_ones(indefinite, quantity) -> None:
    import importlib

    tr = importlib.import_module("landscape_fast.linalg.trace")  # the module, not lf.trace
    q = getattr(tr, quantity)
    sk = tr._Sketch(indefinite, seed=4, probe="rademacher", block_size=3)
    probes = range(0, 7)
    plain = sk.plain_products(probes, q)
    sk.grow(12)  # the basis the pilot was not projected on
    fresh = sk.residual_draw(q)(probes)
    torch.testing.assert_close(sk.reprojected(q, probes, plain), fresh, rtol=1e-10, atol=1e-12)


def test_adaptive_hutchpp_on_a_flat_spectrum_is_hutchinson() -> None:
    # no sketch pays on a flat spectrum, and the pilot's products are Hutchinson's first
    # samples: the same numbers for the same products
    op, _ = operator_with_spectrum(np.linspace(1.0, 2.0, 300), seed=5)
    for seed in range(3):
        plain = lf.trace(op, "hutchinson", rtol=0.01, seed=seed)
        pp = lf.trace(op, "hutch++", rtol=0.01, seed=seed)
        assert pp.n_matvecs == plain.n_matvecs and pp.value == pytest.approx(plain.value)


def test_hutchinson_with_rademacher_probes_is_exact_on_a_diagonal() -> None:
    d = torch.linspace(-3.0, 7.0, 50, dtype=F64)
    op = lf.DenseOperator(torch.diag(d))
    est = lf.trace(op, "hutchinson", num_matvecs=8)
    assert est.value == pytest.approx(float(d.sum()), abs=1e-12) and est.stderr == 0.0
    fro = lf.frobenius_norm_sq(op, "hutchinson", num_matvecs=8)
    assert fro.value == pytest.approx(float((d**2).sum()), rel=1e-14)


def test_a_sketch_spanning_the_space_gives_the_exact_value() -> None:
    op, A = operator_with_spectrum(np.linspace(-1.0, 2.0, 12), seed=1)
    est = lf.trace(op, "hutch++", num_matvecs=60, probe="gaussian")
    assert est.value == pytest.approx(float(torch.trace(A)), abs=1e-10)
    assert est.stderr < 1e-10 and any("exact" in n for n in est.notes)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_same_seed_same_numbers_for_every_block_size(indefinite, method) -> None:
    runs = [lf.trace(indefinite, method, rtol=0.05, seed=7, block_size=b) for b in (1, 5, 8)]
    for r in runs[1:]:
        assert r.value == pytest.approx(runs[0].value, abs=1e-10)
        assert r.stderr == pytest.approx(runs[0].stderr, abs=1e-10)
        assert r.samples.numel() == runs[0].samples.numel()
    if method != "xtrace":  # (xtrace takes the exact coordinate route on this small operator)
        assert lf.trace(indefinite, method, rtol=0.05, seed=8).value != runs[0].value


def test_float32_operator_gives_the_float64_numbers_up_to_rounding() -> None:
    op64, _ = operator_with_spectrum(EIGS, seed=3)
    op32, _ = operator_with_spectrum(EIGS, seed=3, dtype=torch.float32)
    a = lf.trace(op64, "hutch++", num_matvecs=60, seed=2)
    b = lf.trace(op32, "hutch++", num_matvecs=60, seed=2)
    assert b.value == pytest.approx(a.value, rel=1e-4)


def test_model_hessian_trace_covers_the_dense_trace() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    X, y = torch.randn(40, 5, dtype=F64), torch.randint(0, 3, (40,))
    model = model.double()
    H = lf.Hessian(model, "ce", (X, y), batch_norm="eval")
    truth = float(torch.trace(H.to_dense()))
    est = lf.trace(H, "hutch++", rtol=0.05, seed=1)
    assert abs(est.value - truth) <= 3 * est.stderr + 1e-9
    assert est.n_matvecs >= est.samples.numel()


def test_max_matvecs_hit_reports_not_converged(indefinite) -> None:
    est = lf.trace(indefinite, "hutchinson", rtol=1e-6, max_matvecs=30)
    assert not est.converged and est.n_matvecs == 30
    assert any("max_matvecs" in n for n in est.notes) and "NOT reached" in est.describe()


def test_first_stop_is_the_first_count_meeting_the_target() -> None:
    x = torch.tensor([1.0, 1.0, 1.0, 5.0, 1.0, 1.0])
    assert first_stop(x, 0.0, lambda v: 0.0, min_samples=2) == 2  # zero variance at 2
    assert first_stop(x[3:], 0.0, lambda v: 1e-9, min_samples=2) is None


def test_bad_input_says_what_to_do(indefinite) -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        lf.trace(indefinite, "power")
    with pytest.raises(ValueError, match="not both"):
        lf.trace(indefinite, num_matvecs=10, rtol=0.1)
    with pytest.raises(ValueError, match="hutch\\+\\+ needs num_matvecs >= 3"):
        lf.trace(indefinite, "hutch++", num_matvecs=2)
    with pytest.raises(ValueError, match="probe must be one of"):
        lf.trace(indefinite, num_matvecs=10, probe="sphere")
    with pytest.raises(ValueError, match="xtrace' estimates traces only"):
        lf.frobenius_norm_sq(indefinite, "xtrace", num_matvecs=10)
    with pytest.warns(UserWarning, match="no standard error"):
        one = lf.trace(indefinite, "hutchinson", num_matvecs=1)
    assert math.isnan(one.stderr)


class _NaNAfter(lf.CurvatureOperator):
    def __init__(self, p: int) -> None:
        super().__init__(p, F64, "cpu")

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = V.clone()
        out[V[:, 0] > 0] = float("nan")  # some probes' products blow up
        return out


def test_nan_products_raise_naming_the_probe() -> None:
    with pytest.raises(FloatingPointError, match=r"trace: probe \[.*\].*not finite"):
        lf.trace(_NaNAfter(20), "hutchinson", num_matvecs=16)
