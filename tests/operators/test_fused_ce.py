"""fused_cross_entropy: same value, gradient and Hessian products as F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from landscape_fast.operators.fused_ce import fused_cross_entropy


def _logits(n=7, c=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(n, c, generator=g, dtype=dtype)).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g)
    y[2] = -100
    return z, y


def _second(loss_fn, z, y, U, batched):
    (g,) = torch.autograd.grad(loss_fn(z, y), z, create_graph=True)
    if batched:
        return torch.autograd.grad(g, z, U, is_grads_batched=True)[0]
    return torch.stack([torch.autograd.grad(g, z, u, retain_graph=True)[0] for u in U])


@pytest.mark.parametrize("batched", [False, True], ids=["looped", "batched"])
def test_matches_cross_entropy_to_second_order(batched):
    z, y = _logits()
    assert torch.allclose(fused_cross_entropy(z, y), F.cross_entropy(z, y), rtol=1e-14)
    g1 = torch.autograd.grad(fused_cross_entropy(z, y), z)[0]
    g2 = torch.autograd.grad(F.cross_entropy(z, y), z)[0]
    assert torch.allclose(g1, g2, rtol=1e-13, atol=1e-16)
    U = torch.randn(4, *z.shape, dtype=z.dtype)
    a = _second(fused_cross_entropy, z, y, U, batched)
    b = _second(F.cross_entropy, z, y, U, batched)
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert a[:, 2].abs().max() == 0  # the ignored row has no curvature


def test_float32_and_all_rows_ignored():
    z, y = _logits(dtype=torch.float32)
    U = torch.randn(2, *z.shape)
    assert torch.allclose(
        _second(fused_cross_entropy, z, y, U, False),
        _second(F.cross_entropy, z, y, U, False),
        atol=1e-6,
    )
    y_all = torch.full_like(y, -100)
    (g,) = torch.autograd.grad(fused_cross_entropy(z, y_all), z, create_graph=True)
    assert g.abs().max() == 0


def test_third_derivative_raises_and_bad_shapes():
    z, y = _logits()
    (g,) = torch.autograd.grad(fused_cross_entropy(z, y), z, create_graph=True)
    u = torch.randn_like(z, requires_grad=True)
    (h,) = torch.autograd.grad(g, z, u, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives"):
        torch.autograd.grad(h.sum(), z)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fused_cross_entropy(z[None], y)
