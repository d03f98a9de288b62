"""``SpectralDensity`` estimators against exact spectra: moments, counts, rank, outliers, plot."""

import json
import math

import pytest
import torch

import landscape_fast as lf
from landscape_fast.linalg.slq import spectral_density
from landscape_fast.testing import operator_with_spectrum

F64 = torch.float64

#: Indefinite, rank-deficient spectrum with 6 distinct eigenvalues (p = 25).
STEPS_EIGS = torch.tensor([-2.0] * 3 + [-0.5] * 2 + [0.0] * 10 + [1.0] * 5 + [3.0] * 4 + [7.0])


def _predicted_se(A: torch.Tensor, j: int, n_v: int) -> float:
    """Rademacher Hutchinson SE of tr(A^j): sqrt(2(‖A^j‖_F² − Σ diag²)/n_v)."""
    Aj = torch.linalg.matrix_power(A, j)
    return math.sqrt(2 * (float((Aj**2).sum()) - float((Aj.diagonal() ** 2).sum())) / n_v)


def test_moments_match_exact_within_the_predicted_error() -> None:
    g = torch.Generator().manual_seed(0)
    eigs = torch.rand(40, generator=g, dtype=F64) * 3 - 1
    op, A = operator_with_spectrum(eigs, seed=1)
    n_v = 30
    d = spectral_density(op, num_probes=n_v, num_steps=4, seed=2)
    e0 = d.moment(0)
    assert e0.value == pytest.approx(40.0, abs=1e-10) and e0.stderr < 1e-10
    for j in range(1, 5):
        exact = float((eigs**j).sum())
        pred = _predicted_se(A, j, n_v)
        est = d.moment(j)
        # Gauss quadrature with 4 nodes is exact for degree <= 7: only the probe noise remains,
        # and with Rademacher probes (‖z‖² = p) SLQ equals Hutchinson's estimate.
        assert abs(est.value - exact) <= 4 * pred, (j, est.value, exact, pred)
        assert pred / 3 <= est.stderr <= 3 * pred, (j, est.stderr, pred)
        assert est.method == "slq" and est.quantity == f"tr H^{j}" and est.samples.numel() == n_v


def test_moment_coverage_of_the_reported_stderr() -> None:
    g = torch.Generator().manual_seed(1)
    eigs = torch.rand(40, generator=g, dtype=F64) * 2 - 0.5
    op, _ = operator_with_spectrum(eigs, seed=2)
    hits = {j: 0 for j in (1, 2, 4)}
    for seed in range(200):
        d = spectral_density(op, num_probes=30, num_steps=3, seed=seed)
        for j in hits:
            est = d.moment(j)
            hits[j] += abs(est.value - float((eigs**j).sum())) <= 3 * est.stderr
    assert all(h >= 0.99 * 200 for h in hits.values()), hits


def test_count_rank_negative_mass_exact_on_a_diagonal_operator() -> None:
    op = lf.DenseOperator(torch.diag(STEPS_EIGS.to(F64)))
    d = spectral_density(op, num_probes=5, num_steps=7, seed=0)
    assert bool(d.breakdown.all()) and d.steps.tolist() == [6] * 5  # 6 distinct eigenvalues
    assert float(d.residuals.abs().max()) == 0.0
    cases = [
        (d.count(-1, 2), 17.0),
        (d.count(-3, 8), 25.0),
        (d.count(2, 2.5), 0.0),
        (d.rank(), 15.0),
        (d.negative_mass(), 5 / 25),
        (d.negative_count(), 5.0),
        (d.effective_dimension(1.0), 5 * 0.5 + 4 * 0.75 + 7 / 8),
        (d.trace_of(torch.exp, quantity="tr exp(H)"), float(STEPS_EIGS.double().exp().sum())),
    ]
    for est, exact in cases:
        assert est.value == pytest.approx(exact, abs=1e-9), est.describe()
        assert est.stderr < 1e-9
    assert d.trace_of(torch.exp, quantity="tr exp(H)").quantity == "tr exp(H)"


def test_count_rank_negative_mass_within_three_se_on_a_rotated_operator() -> None:
    op, _ = operator_with_spectrum(STEPS_EIGS, seed=4)
    d = spectral_density(op, num_probes=12, num_steps=8, seed=3)
    cases = [
        (d.count(-1, 2), 17.0),
        (d.rank(), 15.0),
        (d.negative_mass(), 5 / 25),
        (d.negative_count(), 5.0),
        (d.effective_dimension(1.0), 5 * 0.5 + 4 * 0.75 + 7 / 8),
    ]
    for est, exact in cases:
        assert est.stderr > 0
        assert abs(est.value - exact) <= 3 * est.stderr, est.describe()


def test_density_integrates_to_one_with_and_without_refinement() -> None:
    eigs = torch.cat([torch.linspace(-0.2, 1, 117, dtype=F64), torch.tensor([10.0, 20, 30])])
    op, _ = operator_with_spectrum(eigs, seed=0)
    for refine in (0, 3):
        d = spectral_density(op, num_probes=4, num_steps=40, refine=refine)
        grid, phi = d.density()
        assert grid.numel() == 2000 and bool((phi >= 0).all())
        assert abs(float(torch.trapezoid(phi, grid)) - 1.0) < 1e-3
        sigma = d.default_sigma()
        assert sigma == pytest.approx((30 - float(d.nodes[d.mask].min())) / 200, rel=1e-6)
        grid2, phi2 = d.density(sigma=0.05)
        assert abs(float(torch.trapezoid(phi2, grid2)) - 1.0) < 1e-3
    with pytest.raises(ValueError, match="sigma"):
        d.density(sigma=0.0)


def test_outliers_are_the_planted_ones_with_and_without_refinement() -> None:
    g = torch.Generator().manual_seed(0)
    eigs = torch.cat([torch.rand(197, generator=g, dtype=F64), torch.tensor([10.0, 20, 30])])
    op, _ = operator_with_spectrum(eigs, seed=5)
    planted = torch.tensor([30.0, 20, 10], dtype=F64)
    for refine in (0, 3):
        d = spectral_density(op, num_probes=6, num_steps=40, refine=refine, seed=1)
        torch.testing.assert_close(d.outliers(), planted, rtol=0, atol=1e-8)
        assert d.outliers(side="bottom").numel() == 0
        torch.testing.assert_close(d.outliers(side="both"), planted, rtol=0, atol=1e-8)
    # No outliers in a pure bulk; negative outliers are found with side="bottom".
    bulk, _ = operator_with_spectrum(torch.rand(200, generator=g, dtype=F64), seed=6)
    assert spectral_density(bulk, num_probes=6, num_steps=40).outliers().numel() == 0
    neg, _ = operator_with_spectrum(torch.cat([eigs[:197], torch.tensor([-15.0])]), seed=7)
    d = spectral_density(neg, num_probes=6, num_steps=40)
    torch.testing.assert_close(d.outliers(side="bottom"), torch.tensor([-15.0], dtype=F64))
    assert d.outliers().numel() == 0
    with pytest.raises(ValueError, match="side"):
        d.outliers(side="left")


def test_describe_and_to_dict_are_json_friendly() -> None:
    op, _ = operator_with_spectrum(torch.linspace(-1, 4, 30, dtype=F64), seed=0)
    d = spectral_density(op, num_probes=3, num_steps=12, refine=1)
    line = d.describe()
    assert "p=30" in line and "3 rademacher probes" in line and "1 refined" in line
    out = json.loads(json.dumps(d.to_dict()))
    assert out["num_probes"] == 3 and len(out["nodes"]) == 3 and len(out["weights"][0]) == 12
    assert out["refined"]["converged"] == [True] and out["point_masses"] == pytest.approx([4.0])


def test_plot_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    eigs = torch.cat([torch.linspace(0, 1, 57, dtype=F64), torch.tensor([10.0, 20, 30])])
    op, _ = operator_with_spectrum(eigs, seed=0)
    d = spectral_density(op, num_probes=4, num_steps=30)
    path = tmp_path / "density.png"
    ax = d.plot(path=path)
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "eigenvalue"
    assert len(ax.lines) == 1 + 3  # density and three outlier markers
    ax2 = d.plot(log=False)
    assert ax2.get_yscale() == "linear"
