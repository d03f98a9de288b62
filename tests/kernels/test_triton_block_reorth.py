"""Triton ``block_reorth`` kernels against the float64 reference.

Runs on a CUDA device, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` when there is no GPU). The interpreter is ~1000x slower than torch, so
shapes are tiny; a tiny tile config (:func:`_tiny`) makes those tiny shapes still cover
every code path (several row blocks of ``Q``, several column tiles per program, ragged
edges), and a few cases use the default (GPU) tile sizes.

Every kernel input is allocated inside a NaN-filled guard buffer: an unmasked read past an
edge poisons the result, and a stray write shows up as a non-NaN guard.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os

import pytest
import torch

from landscape_fast.reference.block_reorth import block_reorth_ as reference_block_reorth_
from landscape_fast.testing import REORTH_DTYPE_IDS, REORTH_DTYPE_PAIRS

_HAS_TRITON = importlib.util.find_spec("triton") is not None
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_CAN_RUN = _HAS_TRITON and (_INTERPRET or torch.cuda.is_available())
_SKIP_REASON = (
    "Triton is not installed"
    if not _HAS_TRITON
    else "needs a CUDA device or TRITON_INTERPRET=1 (set before triton is first imported)"
)

pytestmark = [pytest.mark.triton, pytest.mark.skipif(not _CAN_RUN, reason=_SKIP_REASON)]

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

DTYPES, DTYPE_IDS = REORTH_DTYPE_PAIRS, REORTH_DTYPE_IDS

GUARD = 64  # guard elements on each side of every kernel input


@pytest.fixture(scope="module")
def K():
    """The kernel module, imported only once the skip conditions have passed."""
    return importlib.import_module("landscape_fast.kernels.triton.block_reorth")


def _tiny(K):
    # 16-wide tiles, row blocks of 16 and at most 3 programs: m > 16 takes the multi-block
    # path, p > 48 gives programs several column tiles.
    return K.TileConfig(block_p=16, block_m=16, single_m_elems=256, min_block_p=16, max_programs=3)


#: (m, b, p, config): "default" = the GPU tile sizes (one masked tile at these p),
#: "tiny" = :func:`_tiny` tiles.
SHAPES = [
    pytest.param(5, 3, 37, "default", id="single-m"),
    pytest.param(20, 3, 100, "tiny", id="multi-m-gridstride"),
    pytest.param(3, 7, 50, "tiny", id="b>m"),
    pytest.param(17, 1, 1, "tiny", id="b1-p1"),
    pytest.param(0, 2, 10, "default", id="m0"),
]


def _config(K, name):
    return None if name == "default" else _tiny(K)


def _guarded(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` living inside a NaN-filled buffer."""
    n = t.numel()
    buf = torch.full((n + 2 * GUARD,), float("nan"), dtype=t.dtype, device=DEVICE)
    view = buf[GUARD : GUARD + n].view(t.shape)
    view.copy_(t)
    view._guard_buffer = buf  # keep a handle for _guards_intact
    return view


def _guards_intact(t: torch.Tensor) -> bool:
    buf = t._guard_buffer
    return bool(buf[:GUARD].isnan().all() and buf[GUARD + t.numel() :].isnan().all())


def _basis(m: int, p: int, dtype: torch.dtype) -> torch.Tensor:
    """``m`` orthonormal rows of length ``p`` (orthonormal in float64, then rounded).

    With ``m > p`` (only for the primitives, which do not need orthonormality) the rows
    are random unit vectors.
    """
    if m == 0:
        return torch.zeros((0, p), dtype=dtype)
    if m > p:
        q = torch.randn(m, p, dtype=torch.float64)
        return (q / q.norm(dim=1, keepdim=True)).to(dtype)
    q = torch.linalg.qr(torch.randn(p, m, dtype=torch.float64))[0]
    return q.T.contiguous().to(dtype)


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _inputs(m, b, p, wdtype, qdtype):
    Q = _guarded(_basis(m, p, qdtype))
    W = _guarded(torch.randn(b, p, dtype=torch.float64).to(wdtype))
    return Q, W


# --------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,b,p,cfg", SHAPES)
@pytest.mark.parametrize("wdtype,qdtype", DTYPES, ids=DTYPE_IDS)
def test_project(K, m, b, p, cfg, wdtype, qdtype):
    Q, W = _inputs(m, b, p, wdtype, qdtype)
    W_before = W.clone()
    C, n2 = K.project(Q, W, _config(K, cfg))
    assert C.dtype == n2.dtype == torch.float64
    assert C.shape == (m, b) and n2.shape == (b,)
    q, w = Q.double(), W.double()
    scale = q.norm(dim=1, keepdim=True) * w.norm(dim=1) if m else 1.0
    tol = 16 * _eps(wdtype) * math.sqrt(p)
    assert torch.all((C - q @ w.T).abs() <= tol * scale + 1e-300)
    # n2 is a float64 sum of exact float64 squares of the stored values.
    torch.testing.assert_close(n2, (w * w).sum(1), rtol=1e-13, atol=0)
    assert torch.equal(W, W_before)  # read-only
    assert _guards_intact(Q) and _guards_intact(W)


@pytest.mark.parametrize("gram", [False, True], ids=["D", "gram"])
@pytest.mark.parametrize("m,b,p,cfg", SHAPES)
@pytest.mark.parametrize("wdtype,qdtype", DTYPES, ids=DTYPE_IDS)
def test_update(K, m, b, p, cfg, wdtype, qdtype, gram):
    Q, W = _inputs(m, b, p, wdtype, qdtype)
    C = torch.randn(m, b, dtype=torch.float64, device=DEVICE)
    w0, q = W.double().clone(), Q.double()
    out = K.update_(Q, W, C, gram, _config(K, cfg))
    assert out.dtype == torch.float64
    # The kernel applies C rounded to the block's dtype, accumulating in that dtype.
    w_ref = w0 - C.to(wdtype).double().T @ q
    scale = w0.abs().max() + (C.abs().T @ q.abs()).max() if m else w0.abs().max()
    tol = 16 * _eps(wdtype) * math.sqrt(max(m, 1))
    assert (W.double() - w_ref).abs().max() <= tol * scale
    w = W.double()  # the stored result: D and G are defined from it
    if gram:
        assert out.shape == (b, b)
        # Float64 accumulation of exact products: far below float32 resolution.
        torch.testing.assert_close(out, w @ w.T, rtol=0, atol=1e-13 * (w * w).sum(1).max())
    else:
        assert out.shape == (m, b)
        tol = 16 * _eps(wdtype) * math.sqrt(p)
        if m:
            scale = q.norm(dim=1, keepdim=True) * w.norm(dim=1)
            assert torch.all((out - q @ w.T).abs() <= tol * scale)
    assert _guards_intact(Q) and _guards_intact(W)


@pytest.mark.parametrize("gram", [False, True], ids=["plain", "gram"])
@pytest.mark.parametrize(
    "b,p,cfg",
    [
        pytest.param(3, 37, "default", id="default"),
        pytest.param(5, 70, "tiny", id="gridstride"),
        pytest.param(1, 2, "tiny", id="b1-p2"),
    ],
)
@pytest.mark.parametrize("wdtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_transform(K, b, p, cfg, wdtype, gram):
    W = _guarded(torch.randn(b, p, dtype=torch.float64).to(wdtype))
    T = torch.randn(b, b, dtype=torch.float64, device=DEVICE).triu()
    w0 = W.double().clone()
    out = K.transform_(W, T, gram, _config(K, cfg))
    w_ref = T.to(wdtype).double() @ w0
    tol = 16 * _eps(wdtype) * b
    assert (W.double() - w_ref).abs().max() <= tol * (T.abs() @ w0.abs()).max()
    if gram:
        w = W.double()
        assert out.dtype == torch.float64 and out.shape == (b, b)
        torch.testing.assert_close(out, w @ w.T, rtol=0, atol=1e-13 * (w * w).sum(1).max())
    assert _guards_intact(W)


# --------------------------------------------------------------------------------------
# Full op
# --------------------------------------------------------------------------------------


def _run_triton(K, Q, W, cfg, rank_tol):
    """The op through the public API (default tiles) or the kernel module (tiny tiles)."""
    if cfg == "default":
        from landscape_fast.ops import block_reorth

        out = block_reorth(Q, W, rank_tol=rank_tol, inplace=True, backend="triton")
        return out.coeffs, out.R
    return K.block_reorth_(Q, W, rank_tol, config=_tiny(K))


def _check_against_reference(Q, W_in, W_out, coeffs, R, rank_tol, wdtype):
    q = Q.double()
    w_ref = W_in.double().clone()
    c_ref, r_ref = reference_block_reorth_(q, w_ref, rank_tol)
    tol = 1e-11 if wdtype == torch.float64 else 2e-5
    norms = W_in.double().norm(dim=1)
    assert torch.equal(R.diagonal() == 0, r_ref.diagonal() == 0)  # same deficient vectors
    torch.testing.assert_close(R, r_ref, rtol=0, atol=tol * norms.max())
    torch.testing.assert_close(coeffs, c_ref, rtol=0, atol=tol * norms.max())
    torch.testing.assert_close(W_out.double(), w_ref, rtol=0, atol=tol)
    # Properties: orthogonal to Q (as well as the reference manages with this, possibly
    # rounded, basis), orthonormal within the block, and W_in = C^T Q + R^T W_out.
    w = W_out.double()
    kept = R.diagonal() > 0
    eps = _eps(wdtype)
    if Q.shape[0]:
        assert (q @ w.T).abs().max() <= 10 * (q @ w_ref.T).abs().max() + 100 * eps
    eye = torch.diag(kept.to(torch.float64))
    assert (w @ w.T - eye).abs().max() <= 100 * eps
    recon = coeffs.T @ q + R.T @ w
    assert (recon - W_in.double()).abs().max() <= 100 * eps * norms.max() * math.sqrt(
        max(Q.shape[0], 1)
    )


@pytest.mark.parametrize(
    "m,b,p,cfg",
    [
        pytest.param(6, 3, 40, "default", id="public-api"),
        pytest.param(20, 4, 100, "tiny", id="multi-m"),
        pytest.param(3, 5, 33, "tiny", id="b>m"),
        pytest.param(0, 3, 17, "default", id="m0"),
        pytest.param(5, 1, 8, "tiny", id="b1"),
        # GPU default tiles on a larger problem: BLOCK_B = 64, row blocks of 64 (m > 128
        # at this b leaves the single-block path), several programs.
        pytest.param(150, 40, 400, "default", id="gpu-tiles-multi-m"),
    ],
)
@pytest.mark.parametrize("wdtype,qdtype", DTYPES, ids=DTYPE_IDS)
def test_block_reorth_matches_reference(K, m, b, p, cfg, wdtype, qdtype):
    Q, W = _inputs(m, b, p, wdtype, qdtype)
    W_in = W.clone()
    rank_tol = 1e-7 if wdtype == torch.float64 else 1e-5
    coeffs, R = _run_triton(K, Q, W, cfg, rank_tol)
    assert coeffs.shape == (m, b) and R.shape == (b, b)
    assert coeffs.dtype == R.dtype == torch.float64
    assert torch.all(R.diagonal() > 0)  # random vectors: nothing deficient
    _check_against_reference(Q, W_in, W, coeffs, R, rank_tol, wdtype)
    assert _guards_intact(Q) and _guards_intact(W)


@pytest.mark.parametrize("cfg", ["default", "tiny"])
@pytest.mark.parametrize("wdtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_block_reorth_deficient(K, wdtype, cfg):
    """In-span and repeated vectors come out as zero rows with R_kk = 0, as in the reference."""
    m, p = 18, 60
    Q = _basis(m, p, wdtype)
    w = torch.randn(5, p, dtype=torch.float64)
    w[1] = torch.randn(m, dtype=torch.float64) @ Q.double()  # in span(Q)
    w[2] = 2.0 * w[0]  # dependent on a predecessor
    w[4] = w[3] - 0.5 * w[0] + torch.randn(m, dtype=torch.float64) @ Q.double()
    Q, W = _guarded(Q), _guarded(w.to(wdtype))
    W_in = W.clone()
    rank_tol = 1e-7 if wdtype == torch.float64 else 1e-5
    coeffs, R = _run_triton(K, Q, W, cfg, rank_tol)
    assert (R.diagonal() == 0).tolist() == [False, True, True, False, True]
    assert torch.all(W[[1, 2, 4]] == 0)
    _check_against_reference(Q, W_in, W, coeffs, R, rank_tol, wdtype)


# --------------------------------------------------------------------------------------
# Tile plans (no kernel launch)
# --------------------------------------------------------------------------------------


def test_default_plans_fit_gpu_constraints(K):
    """Default tiles: powers of two >= 16 (tl.dot on GPUs), bounded register tiles."""
    cfg = K.DEFAULT_CONFIG
    for m in (0, 1, 15, 16, 100, 128, 129, 300, 1000):
        for b in (1, 2, 16, 33, 64):
            for p in (1, 17, 1000, 10**7):
                plan = K._plan(m, b, p, torch.device("cpu"), cfg)
                for dim in (plan.block_b, plan.block_m, plan.block_p):
                    assert dim >= 16 and dim & (dim - 1) == 0
                assert plan.block_b >= b
                assert plan.block_m * plan.num_mb >= m
                assert plan.block_p * plan.num_tiles >= p
                assert max(plan.block_b, plan.block_m) * plan.block_p <= cfg.tile_elems
                assert plan.single_m == (plan.num_mb == 1)
                assert 1 <= plan.grid <= plan.num_tiles


def test_tile_config_validation(K):
    with pytest.raises(ValueError, match="power of two"):
        K.TileConfig(block_p=48)
    with pytest.raises(ValueError, match="max_programs"):
        K.TileConfig(max_programs=0)
