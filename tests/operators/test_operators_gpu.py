"""Curvature operators on a CUDA model agree with the same model on the CPU (GPU only)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import landscape_fast as lf

pytestmark = pytest.mark.gpu


def _model_and_data():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 5)).double()
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (40,), generator=g)
    return model, (X, y)


@pytest.mark.parametrize("hvp", ["reverse", "cached", "forward", "finite_difference", "auto"])
def test_hessian_on_cuda_matches_cpu(hvp):
    model, data = _model_and_data()
    V = torch.randn(3, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    cpu = lf.Hessian(model, "ce", data, batch_size=16, hvp=hvp).matmat(V)
    gpu_model = copy.deepcopy(model).cuda()
    H = lf.Hessian(gpu_model, "ce", data, batch_size=16, hvp=hvp)  # data moved per batch
    out = H.matmat(V.cuda())
    assert out.device.type == "cuda"
    tol = 1e-6 if hvp == "finite_difference" else 1e-10
    assert torch.allclose(out.cpu(), cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("fused", [True, False])
def test_ggn_and_fisher_on_cuda_match_cpu(fused):
    model, data = _model_and_data()
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    gpu_model = copy.deepcopy(model).cuda()
    for make in (
        lambda m: lf.GGN(m, "ce", data, fused=fused),
        lambda m: lf.EmpiricalFisher(m, "ce", data),
        lambda m: lf.GradientCovariance(m, "ce", data),
    ):
        cpu = make(model).matmat(V)
        gpu = make(gpu_model).matmat(V.cuda())
        assert torch.allclose(gpu.cpu(), cpu, rtol=1e-10, atol=1e-12)
