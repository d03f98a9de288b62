"""The shared kernel driver: Cholesky with skipped columns, and CGS2 + CholeskyQR2 with
pure-torch primitives against the reference (so driver bugs are caught without kernels)."""

import pytest
import torch

from landscape_fast.kernels.block_reorth_driver import (
    cgs2_cholqr2,
    cholesky_skip,
    inverse_transpose,
)
from landscape_fast.reference.block_reorth import block_reorth_ as reference_
from landscape_fast.testing import random_orthonormal_rows

F64 = torch.float64


def project(Q, W):
    return (Q.to(W.dtype) @ W.T).to(F64), (W.to(F64) ** 2).sum(1)


def update_(Q, W, C, gram):
    Qc = Q.to(W.dtype)
    W.sub_(C.to(W.dtype).T @ Qc)
    return (W @ W.T if gram else Qc @ W.T).to(F64)


def transform_(W, T, gram):
    W.copy_(T.to(W.dtype) @ W)
    return (W @ W.T).to(F64) if gram else torch.empty(0, dtype=F64)


def test_cholesky_skip_matches_cholesky_when_full_rank() -> None:
    A = torch.randn(6, 4, dtype=F64)
    G = A.T @ A
    R = cholesky_skip(G, G.diagonal().sqrt(), 1e-7)
    torch.testing.assert_close(R, torch.linalg.cholesky(G).T, rtol=0, atol=1e-12)


def test_cholesky_skip_drops_dependent_columns() -> None:
    A = torch.randn(10, 4, dtype=F64)
    A[:, 2] = A[:, 0] - 3 * A[:, 1]  # column 2 is dependent
    G = A.T @ A
    R = cholesky_skip(G, G.diagonal().sqrt(), 1e-7)
    assert (R.diagonal() > 0).tolist() == [True, True, False, True]
    assert (R[2] == 0).all()
    kept = [0, 1, 3]
    torch.testing.assert_close((R.T @ R)[kept][:, kept], G[kept][:, kept], rtol=1e-12, atol=1e-10)
    T = inverse_transpose(R)
    assert (T[2] == 0).all()
    Qf = (T @ A.T)[kept]  # orthonormal rows
    torch.testing.assert_close(Qf @ Qf.T, torch.eye(3, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("m, b, p", [(0, 3, 40), (5, 1, 40), (4, 6, 30), (10, 4, 200)])
@pytest.mark.parametrize("kind", ["random", "duplicate"])
def test_driver_matches_reference(m: int, b: int, p: int, kind: str) -> None:
    gen = torch.Generator().manual_seed(7)
    Q = random_orthonormal_rows(m, p, generator=gen)
    W = torch.randn(b, p, dtype=F64, generator=gen)
    if kind == "duplicate" and b > 2:
        W[2] = W[0] + W[1]
    Wd, Wr = W.clone(), W.clone()
    C, R = cgs2_cholqr2(Q, Wd, 1e-7, project, update_, transform_)
    Cr, Rr = reference_(Q, Wr, 1e-7)
    torch.testing.assert_close(C, Cr, rtol=0, atol=1e-12)
    torch.testing.assert_close(R, Rr, rtol=0, atol=1e-10)
    torch.testing.assert_close(Wd, Wr, rtol=0, atol=1e-10)
