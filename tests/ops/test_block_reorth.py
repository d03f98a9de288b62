"""``block_reorth`` on every backend against the float64 reference.

Accuracy rule (flash-attention's): a backend's error against the float64 oracle may be at
most twice the error of the reference run in the same dtype, plus a small floor. On top,
the op's contract is checked directly: orthogonality to ``Q``, orthonormality within the
block, the factorization ``W = CᵀQ + RᵀW_out``, and the same deficient vectors.
"""

from __future__ import annotations

import pytest
import torch

from landscape_fast import _backend
from landscape_fast.ops.block_reorth import block_reorth, default_rank_tol
from landscape_fast.reference.block_reorth import block_reorth_ as reference_
from landscape_fast.testing import REORTH_DTYPE_IDS, REORTH_DTYPE_PAIRS, random_orthonormal_rows

BACKENDS = ("reference", "cpp", "triton", "cuda")
F32, F64 = torch.float32, torch.float64
# (m, b, p): empty basis, single vectors, b > m, p not a multiple of any tile, p = 1, ...
SHAPES = [
    (0, 1, 7),
    (0, 4, 33),
    (1, 1, 64),
    (5, 1, 129),
    (3, 6, 37),
    (8, 4, 100),
    (4, 3, 1),
    (16, 16, 257),
    (30, 2, 1000),
    (40, 8, 4099),
]
#: Floors for the error rule (absolute, on unit-norm outputs).
FLOOR = {F64: 1e-12, F32: 2e-6}
#: Contract bounds on the backend's own output, in units of the block dtype's eps.
EPS = {F64: torch.finfo(F64).eps, F32: torch.finfo(F32).eps}


def _device(backend: str) -> str:
    return (
        "cuda"
        if backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
        else "cpu"
    )


def _too_big_for_interpreter(backend: str, m: int, b: int, p: int) -> bool:
    return backend == "triton" and _backend.triton_interpret() and p * max(m, b, 1) > 20_000


def _skip_unless_runs(backend: str, Q: torch.Tensor, W: torch.Tensor) -> None:
    reasons = _backend.BACKENDS[backend].refusal_reasons((Q, W))
    if reasons:
        pytest.skip(f"{backend}: {'; '.join(reasons)}")


def _make(m: int, b: int, p: int, wdtype, qdtype, kind: str = "random", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    Q = random_orthonormal_rows(m, p, F64, generator=gen).to(qdtype)
    Qx = Q.to(F64)  # the basis exactly as stored
    W = torch.randn(b, p, dtype=F64, generator=gen)
    if kind == "in_span" and m > 0:
        W = torch.randn(b, m, dtype=F64, generator=gen) @ Qx
    elif kind == "near_span" and m > 0:
        W = torch.randn(b, m, dtype=F64, generator=gen) @ Qx + 1e-3 * W
    elif kind == "duplicate" and b > 1:
        W[1] = 2.0 * W[0]
    elif kind == "near_duplicate" and b > 1:
        W[1] = W[0] + 1e-3 * W[1]
    elif kind == "zero_row":
        W[0] = 0.0
    return Q, W.to(wdtype)


def _oracle(Q: torch.Tensor, W: torch.Tensor, rank_tol: float):
    W64 = W.to(F64).clone()
    C, R = reference_(Q.to(F64), W64, rank_tol)
    return W64, C, R


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.cpu().to(F64) - b.cpu().to(F64)).abs().max().item() if a.numel() else 0.0


def _check(backend: str, Q: torch.Tensor, W: torch.Tensor) -> None:
    why = _backend.BACKENDS[backend].unavailable_reason()
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    device = _device(backend)
    Q, W = Q.to(device), W.to(device)
    _skip_unless_runs(backend, Q, W)
    tol = default_rank_tol(W.dtype)
    W_in = W.clone()
    out = block_reorth(Q, W, backend=backend)
    assert torch.equal(W, W_in), "inplace=False must not modify W"
    assert out.W.dtype == W.dtype and out.W.shape == W.shape and out.W.device == W.device
    assert out.coeffs.shape == (Q.shape[0], W.shape[0]) and out.coeffs.dtype == F64
    assert out.R.shape == (W.shape[0], W.shape[0]) and out.R.dtype == F64

    W64, C64, R64 = _oracle(Q, W, tol)
    assert torch.equal(out.deficient.cpu(), R64.diagonal() == 0), (
        f"deficient vectors differ: {out.deficient.tolist()} vs {(R64.diagonal() == 0).tolist()}"
    )
    if W.dtype == F64:
        same = (W64, C64, R64)
    else:  # the reference's own error in this dtype sets the bar
        Wr = W.clone()
        Cr, Rr = reference_(Q, Wr, tol)
        same = (Wr, Cr, Rr)
    scale = max(1.0, W.to(F64).norm(dim=1).max().item())
    # Conditioning: a vector that loses most of its norm in the projections comes out with
    # a direction error of about eps * |w_k| / R_kk, which then spreads to later entries
    # of R and W (different but equally stable algorithms differ by that much).
    kept64 = R64.diagonal() > 0
    amp = 1.0
    if kept64.any():
        ratios = W.to(F64).cpu().norm(dim=1)[kept64] / R64.diagonal()[kept64]
        amp = max(1.0, ratios.max().item())
    for name, got, truth, ref in zip(
        ("W", "coeffs", "R"), (out.W, out.coeffs, out.R), (W64, C64, R64), same
    ):
        floor = (
            FLOOR[W.dtype] * (1.0 if name == "W" else scale) * (1.0 if name == "coeffs" else amp)
        )
        err, ref_err = _max_err(got, truth), _max_err(ref, truth)
        assert err <= 2 * ref_err + floor, (
            f"{backend} {name}: error {err:.3e} vs reference-in-dtype {ref_err:.3e} "
            f"(floor {floor:.1e}, amplification {amp:.1f})"
        )

    # The contract, on the backend's own output.
    kept = ~out.deficient
    eps = EPS[W.dtype]
    m, b, p = Q.shape[0], W.shape[0], W.shape[1]
    Wk = out.W[kept.to(device)].to(F64)
    if m and Wk.numel():
        assert (Q.to(F64) @ Wk.T).abs().max() <= 50 * eps * (m * p) ** 0.5 + 1e-300
    if Wk.numel():
        gram_err = (Wk @ Wk.T - torch.eye(Wk.shape[0], dtype=F64, device=device)).abs().max()
        assert gram_err <= 50 * eps * p**0.5, f"|WWᵀ - I| = {gram_err:.3e}"
    assert (out.W[~kept.to(device)] == 0).all()
    R = out.R.cpu()
    assert torch.equal(R, R.triu()) and (R.diagonal() >= 0).all()
    recon = out.coeffs.T.cpu() @ Q.to(F64).cpu() + R.T @ out.W.to(F64).cpu()
    recon_err = _max_err(recon, W.to(F64))
    resid = max(tol * scale * 2, 0.0)  # deficient vectors drop a residual below rank_tol*|w|
    assert recon_err <= 1e3 * eps * scale * (m + b) + (resid if (~kept).any() else 0.0), recon_err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wdtype, qdtype", REORTH_DTYPE_PAIRS, ids=REORTH_DTYPE_IDS)
@pytest.mark.parametrize("m, b, p", SHAPES, ids=lambda s: str(s))
def test_random_shapes(backend, wdtype, qdtype, m, b, p) -> None:
    if _too_big_for_interpreter(backend, m, b, p):
        pytest.skip("shape too large for the Triton interpreter")
    _check(backend, *_make(m, b, p, wdtype, qdtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wdtype, qdtype", REORTH_DTYPE_PAIRS, ids=REORTH_DTYPE_IDS)
@pytest.mark.parametrize(
    "kind", ["in_span", "near_span", "duplicate", "near_duplicate", "zero_row"]
)
def test_nearly_dependent_inputs(backend, wdtype, qdtype, kind) -> None:
    m, b, p = (6, 4, 300)
    _check(backend, *_make(m, b, p, wdtype, qdtype, kind=kind, seed=1))


def test_deficiency_is_reported() -> None:
    Q, W = _make(6, 4, 300, F64, F64, kind="duplicate")
    out = block_reorth(Q, W, backend="reference")
    assert out.deficient.tolist() == [False, True, False, False]
    Q, W = _make(6, 3, 300, F64, F64, kind="in_span")
    assert block_reorth(Q, W, backend="reference").deficient.all()


def test_b_larger_than_p_leaves_extra_vectors_deficient() -> None:
    Q, W = _make(2, 5, 4, F64, F64)
    out = block_reorth(Q, W)
    assert int((~out.deficient).sum()) == 2


def test_inplace_and_empty_block() -> None:
    Q, W = _make(3, 2, 50, F64, F64)
    W0 = W.clone()
    out = block_reorth(Q, W, inplace=True)
    assert out.W.data_ptr() == W.data_ptr() and not torch.equal(W, W0)
    empty = block_reorth(Q, torch.zeros(0, 50, dtype=F64))
    assert empty.W.shape == (0, 50) and empty.coeffs.shape == (3, 0) and empty.R.shape == (0, 0)


@pytest.mark.parametrize(
    "Q, W, error, match",
    [
        (torch.zeros(3, 5), torch.zeros(5), ValueError, "W must be \\(b, p\\)"),
        (torch.zeros(3, 5), torch.zeros(2, 6), ValueError, "same number of columns"),
        (torch.zeros(3, 0), torch.zeros(2, 0), ValueError, "p = 0"),
        (
            torch.zeros(3, 5),
            torch.zeros(2, 5, dtype=torch.float16),
            TypeError,
            "float32 or float64",
        ),
        (torch.zeros(3, 5, dtype=torch.int64), torch.zeros(2, 5), TypeError, "basis Q of dtype"),
        (torch.zeros(3, 5, dtype=F64), torch.zeros(2, 5), TypeError, "never higher"),
        (torch.zeros(5, 3).T, torch.zeros(2, 5), ValueError, "Q must be contiguous"),
        (torch.zeros(3, 5), torch.zeros(5, 2).T, ValueError, "W must be contiguous"),
        (torch.zeros(3, 5, device="meta"), torch.zeros(2, 5), ValueError, "one device"),
        (torch.zeros(3, 5), torch.zeros(2, 5, requires_grad=True), ValueError, "require grad"),
        (torch.zeros(3, 5).numpy(), torch.zeros(2, 5), TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_inputs_get_clear_errors(Q, W, error, match) -> None:
    with pytest.raises(error, match=match):
        block_reorth(Q, W)


def test_negative_rank_tol() -> None:
    with pytest.raises(ValueError, match="rank_tol"):
        block_reorth(torch.zeros(1, 3), torch.ones(1, 3), rank_tol=-1.0)


def test_block_width_limits_are_declared_capabilities() -> None:
    from landscape_fast.ops.block_reorth import MAX_BLOCK, _capability_reasons

    wide = torch.zeros(MAX_BLOCK["cuda"] + 1, 8)
    assert "at most" in _capability_reasons("cuda", (torch.zeros(1, 8), wide))[0]
    assert _capability_reasons("triton", (torch.zeros(1, 8), wide)) == []
