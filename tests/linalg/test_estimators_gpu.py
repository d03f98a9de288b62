"""Estimators on CUDA operators give the CPU numbers (probes are drawn on the CPU)."""

import pytest
import torch

import landscape_fast as lf
from landscape_fast.testing import operator_with_spectrum

pytestmark = pytest.mark.gpu


def _pair(p: int = 300):
    eigs = torch.cat([torch.tensor([40.0, 30.0, 20.0]), torch.linspace(-1.0, 2.0, p - 3)])
    cpu, A = operator_with_spectrum(eigs, seed=2, dtype=torch.float32)
    return cpu, lf.DenseOperator(A.to(torch.float32).cuda())


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_on_cuda_matches_cpu(method) -> None:
    cpu, gpu = _pair()
    a = lf.trace(cpu, method, num_matvecs=60, seed=3)
    b = lf.trace(gpu, method, num_matvecs=60, seed=3)
    assert b.value == pytest.approx(a.value, rel=1e-4)
    assert b.stderr == pytest.approx(a.stderr, rel=1e-3, abs=1e-6)


def test_diagonal_and_density_on_cuda_match_cpu() -> None:
    cpu, gpu = _pair()
    a, b = lf.diagonal(cpu, num_matvecs=40, seed=1), lf.diagonal(gpu, num_matvecs=40, seed=1)
    torch.testing.assert_close(b.value, a.value, rtol=1e-4, atol=1e-4)
    da = lf.spectral_density(cpu, num_probes=4, num_steps=30, seed=1)
    db = lf.spectral_density(gpu, num_probes=4, num_steps=30, seed=1, refine=3)
    assert db.count(10.0, 50.0).value == pytest.approx(3.0, abs=1e-6)
    assert db.moment(1).value == pytest.approx(da.moment(1).value, rel=1e-3)
