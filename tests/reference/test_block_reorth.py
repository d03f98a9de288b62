"""The reference ``block_reorth`` against an independent numpy computation."""

import numpy as np
import pytest
import torch

from landscape_fast.reference.block_reorth import block_reorth_
from landscape_fast.testing import random_orthonormal_rows


@pytest.mark.parametrize("m, b, p", [(0, 3, 20), (4, 1, 30), (5, 4, 60), (3, 7, 40)])
def test_matches_numpy_projection_and_qr(m: int, b: int, p: int) -> None:
    gen = torch.Generator().manual_seed(m * 100 + b)
    Q = random_orthonormal_rows(m, p, generator=gen)
    W = torch.randn(b, p, dtype=torch.float64, generator=gen)
    q, w = Q.numpy(), W.numpy()
    C_np = q @ w.T  # exact coefficients for an orthonormal basis
    proj = w - C_np.T @ q
    qr_q, qr_r = np.linalg.qr(proj.T)
    signs = np.sign(np.diag(qr_r))
    W_np, R_np = (qr_q * signs).T, qr_r * signs[:, None]

    out = W.clone()
    C, R = block_reorth_(Q, out, 1e-7)
    np.testing.assert_allclose(C.numpy(), C_np, atol=1e-12)
    np.testing.assert_allclose(R.numpy(), R_np, atol=1e-12)
    np.testing.assert_allclose(out.numpy(), W_np, atol=1e-12)


def test_low_precision_basis_is_used_exactly_as_stored() -> None:
    gen = torch.Generator().manual_seed(3)
    Q = random_orthonormal_rows(6, 500, generator=gen).to(torch.bfloat16)
    W = torch.randn(3, 500, generator=gen)
    out = W.clone()
    block_reorth_(Q, out, 1e-5)
    # Orthogonal to the stored (rounded) basis to float32 precision, far below bf16's eps.
    assert (Q.float() @ out.T).abs().max() < 1e-5
