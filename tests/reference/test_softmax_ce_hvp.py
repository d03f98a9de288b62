"""The reference ``softmax_ce_hvp`` against independent float64 computations.

* an explicit ``(C, C)`` Hessian ``diag(p) − p pᵀ`` per sample (tiny ``C``), times each tangent;
* ``torch.autograd`` double backward of the weighted cross-entropy sum w.r.t. the logits
  (the Hessian w.r.t. the logits does not depend on the labels);
* the edge cases of the definition: masked classes, rows of ``−∞``, huge logits, zero weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from landscape_fast.reference.softmax_ce_hvp import probabilities, softmax_ce_hvp_

F64 = torch.float64


def run(z: torch.Tensor, U: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    out = torch.empty_like(U)
    softmax_ce_hvp_(z, U, w, out)
    return out


def dense_hessians(z: torch.Tensor) -> torch.Tensor:
    """``(N, C, C)`` float64 Hessians of the cross-entropy w.r.t. each row of logits."""
    p = torch.softmax(z.to(F64), dim=1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


@pytest.mark.parametrize("N, C, k", [(1, 1, 1), (3, 2, 2), (4, 5, 3), (2, 9, 17)])
def test_matches_the_dense_hessian(N: int, C: int, k: int) -> None:
    gen = torch.Generator().manual_seed(N * 100 + C)
    z = 2 * torch.randn(N, C, dtype=F64, generator=gen)
    U = torch.randn(k, N, C, dtype=F64, generator=gen)
    w = torch.rand(N, dtype=F64, generator=gen)
    H = dense_hessians(z)
    want = w[None, :, None] * torch.einsum("ncd,knd->knc", H, U)
    torch.testing.assert_close(run(z, U, w), want, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(
        run(z, U), torch.einsum("ncd,knd->knc", H, U), rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize("N, C, k", [(5, 7, 3), (8, 50, 2)])
def test_matches_autograd_double_backward(N: int, C: int, k: int) -> None:
    gen = torch.Generator().manual_seed(C)
    z = 3 * torch.randn(N, C, dtype=F64, generator=gen)
    U = torch.randn(k, N, C, dtype=F64, generator=gen)
    w = torch.rand(N, dtype=F64, generator=gen) / N
    y = torch.randint(0, C, (N,), generator=gen)
    zg = z.clone().requires_grad_()
    loss = (w * F.cross_entropy(zg, y, reduction="none")).sum()
    (g,) = torch.autograd.grad(loss, zg, create_graph=True)
    want = torch.stack([torch.autograd.grad(g, zg, U[j], retain_graph=True)[0] for j in range(k)])
    torch.testing.assert_close(run(z, U, w), want, rtol=1e-12, atol=1e-15)
    # another set of labels, same Hessian
    y2 = (y + 1) % C
    loss2 = (w * F.cross_entropy(zg, y2, reduction="none")).sum()
    (g2,) = torch.autograd.grad(loss2, zg, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(g2, zg, U[0])[0], want[0], rtol=1e-12, atol=0)


def test_masked_classes_and_all_masked_rows() -> None:
    z = torch.tensor([[0.5, float("-inf"), -1.0, float("-inf")], [float("-inf")] * 4], dtype=F64)
    p = probabilities(z, F64)
    assert p[0, 1] == 0 and p[0, 3] == 0 and torch.isclose(p[0].sum(), torch.tensor(1.0, dtype=F64))
    assert torch.equal(p[1], torch.zeros(4, dtype=F64))
    U = torch.randn(2, 2, 4, dtype=F64)
    out = run(z, U)
    assert torch.equal(out[:, 1], torch.zeros(2, 4, dtype=F64))
    assert (out[:, 0, [1, 3]] == 0).all()
    # the unmasked classes see the Hessian of the softmax over those classes only
    sub = z[:1, [0, 2]]
    want = torch.einsum("ncd,knd->knc", dense_hessians(sub), U[:, :1][:, :, [0, 2]])
    torch.testing.assert_close(out[:, :1][:, :, [0, 2]], want, rtol=1e-14, atol=1e-16)


def test_huge_logits_do_not_overflow() -> None:
    z = torch.tensor([[1e4, 0.0, -1e4], [1e4, 1e4 - 1.0, 5.0]], dtype=F64)
    U = torch.randn(3, 2, 3, dtype=F64)
    out = run(z, U)
    assert torch.isfinite(out).all()
    want = torch.einsum("ncd,knd->knc", dense_hessians(z), U)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-300)
    assert (out[:, 0].abs() < 1e-300).all()  # one-hot softmax: H = 0


def test_zero_weight_rows_are_exact_zeros_even_with_nan_inputs() -> None:
    z = torch.randn(3, 5, dtype=F64)
    U = torch.randn(2, 3, 5, dtype=F64)
    z[1] = float("nan")
    U[:, 1] = float("inf")
    w = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
    out = run(z, U, w)
    assert torch.equal(out[:, 1], torch.zeros(2, 5, dtype=F64))
    assert torch.isfinite(out).all()


def test_nan_logits_propagate() -> None:
    z = torch.tensor([[0.0, float("nan"), 1.0], [0.0, float("inf"), 1.0]], dtype=F64)
    out = run(z, torch.randn(1, 2, 3, dtype=F64))
    assert torch.isnan(out).all()


def test_in_place_on_the_tangents() -> None:
    z = torch.randn(4, 6, dtype=F64)
    U = torch.randn(3, 4, 6, dtype=F64)
    want = run(z, U)
    softmax_ce_hvp_(z, U, None, U)
    torch.testing.assert_close(U, want, rtol=0, atol=0)


def test_low_precision_inputs_are_computed_in_float32() -> None:
    z = torch.randn(3, 40).to(torch.bfloat16)
    U = torch.randn(2, 3, 40).to(torch.bfloat16)
    out = run(z, U)
    assert out.dtype == torch.bfloat16
    want = run(z.to(F64), U.to(F64))
    torch.testing.assert_close(out.to(F64), want, rtol=8e-3, atol=1e-3)
