"""C++/OpenMP ``block_reorth`` primitives (``csrc/cpu/block_reorth.cpp``) against float64 torch.

Each primitive is called directly through ``torch.ops.landscape_fast`` and compared with the
same computation done in float64 on the same (already rounded) inputs, on random, odd and
degenerate shapes (``m = 0``, ``b = 1``, ``b > m``, ``p = 1``, ``p`` not a multiple of the
SIMD width or of the column tiles, several tiles and reduction chunks), for every supported
(block, basis) dtype pair. The kernels accumulate in float32 within a column tile and in
float64 across tiles; Gram matrices and norms are float64 throughout, so they are checked
to ~1e-13 relative, the float32 products to a bound proportional to ``|Q| |W|^T``.

Every kernel input lives inside a NaN-filled guard buffer: a read past an edge poisons the
result with NaN, and a stray write shows up as a non-NaN guard element.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from landscape_fast.testing import REORTH_DTYPE_IDS, REORTH_DTYPE_PAIRS

_BUILT = importlib.util.find_spec("landscape_fast._C") is not None
pytestmark = [
    pytest.mark.cpp,
    pytest.mark.skipif(
        not _BUILT,
        reason="landscape_fast._C is not built (run `python setup.py build_ext --inplace` or "
        "`pip install --no-build-isolation -e .`)",
    ),
]

DTYPES, DTYPE_IDS = REORTH_DTYPE_PAIRS, REORTH_DTYPE_IDS

#: (m, b, p): degenerate, odd and multi-tile shapes. The kernels use 16-column SIMD vectors,
#: 64-column gemm blocks, sub-tiles of >= 256 columns and tiles of >= 4096 columns.
SHAPES = [
    (0, 3, 100),  # empty basis
    (1, 1, 1),  # p = 1: scalar tail only
    (4, 4, 1),
    (3, 1, 17),  # b = 1, one vector + 1 column
    (5, 7, 33),  # b > m, blocks of 4 with remainders
    (8, 2, 64),  # exactly one gemm column block
    (2, 21, 300),  # b > 16
    (6, 5, 4099),  # p just past a tile and a vector
    (130, 3, 700),  # m not a multiple of the register block, several sub-tiles
    (16, 4, 20011),  # several tiles
    (64, 16, 9001),  # larger m and b
]
SHAPE_IDS = [f"m{m}-b{b}-p{p}" for m, b, p in SHAPES]

GUARD = 37  # guard elements on each side of every kernel input (odd: misaligns the data)


def ops():
    import landscape_fast._C  # noqa: F401  (registers torch.ops.landscape_fast)

    return torch.ops.landscape_fast


def guarded(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A contiguous copy of ``t`` placed inside a NaN-filled buffer: ``(view, buffer)``."""
    buf = torch.full((t.numel() + 2 * GUARD,), float("nan"), dtype=t.dtype)
    view = buf[GUARD : GUARD + t.numel()].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous()
    return view, buf


def assert_guards_intact(buf: torch.Tensor, numel: int) -> None:
    assert torch.isnan(buf[:GUARD]).all() and torch.isnan(buf[GUARD + numel :]).all(), (
        "the kernel wrote outside its tensor"
    )


def make(m: int, b: int, p: int, wdtype: torch.dtype, qdtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(m, p, generator=g, dtype=torch.float64).to(qdtype)
    W = torch.randn(b, p, generator=g, dtype=torch.float64).to(wdtype)
    return Q, W


def products_tol(A: torch.Tensor, B: torch.Tensor, wdtype: torch.dtype) -> torch.Tensor:
    """Error bound of float32 (float64) sums of products: rel * |A| |B|^T + tiny."""
    rel = 1e-12 if wdtype == torch.float64 else 2e-5
    return rel * (A.double().abs() @ B.double().abs().T) + 1e-30


def assert_close_bound(actual: torch.Tensor, expected: torch.Tensor, tol: torch.Tensor) -> None:
    assert actual.dtype == torch.float64
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all(), "NaN/inf in a result: the kernel read outside its input"
    err = (actual - expected).abs()
    worst = (err / tol).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error exceeds the bound by {worst:.3g}x (max abs err {err.max():.3g})"


def rounded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` and back to float64 (what the kernel computes with)."""
    return x.to(dtype).double()


@pytest.mark.parametrize(("wdtype", "qdtype"), DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("m", "b", "p"), SHAPES, ids=SHAPE_IDS)
def test_project(m, b, p, wdtype, qdtype):
    Q, W = make(m, b, p, wdtype, qdtype)
    Qg, qbuf = guarded(Q)
    Wg, wbuf = guarded(W)
    C, n2 = ops().reorth_project(Qg, Wg)
    assert C.shape == (m, b) and n2.shape == (b,)
    Qd, Wd = Q.double(), W.double()
    assert_close_bound(C, Qd @ Wd.T, products_tol(Qd, Wd, wdtype))
    torch.testing.assert_close(n2, (Wd * Wd).sum(1), rtol=1e-13, atol=0)
    assert torch.equal(Wg, W) and torch.equal(Qg, Q), "project must not modify its inputs"
    assert_guards_intact(qbuf, Q.numel())
    assert_guards_intact(wbuf, W.numel())


@pytest.mark.parametrize("gram", [False, True], ids=["D", "gram"])
@pytest.mark.parametrize(("wdtype", "qdtype"), DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("m", "b", "p"), SHAPES, ids=SHAPE_IDS)
def test_update(m, b, p, wdtype, qdtype, gram):
    Q, W = make(m, b, p, wdtype, qdtype)
    C = torch.randn(m, b, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    Qg, qbuf = guarded(Q)
    Wg, wbuf = guarded(W)
    out = ops().reorth_update_(Qg, Wg, C, gram)
    Qd, Cd = Q.double(), rounded(C, wdtype)
    # W -= C^T Q, with C rounded to the block's dtype
    expected_W = W.double() - Cd.T @ Qd
    tol_W = (1e-12 if wdtype == torch.float64 else 2e-6) * (
        W.double().abs() + Cd.abs().T @ Qd.abs()
    ) + 1e-30
    assert_close_bound(Wg.double(), expected_W, tol_W)
    Wn = Wg.double()  # the kernel's own updated block
    if gram:
        assert out.shape == (b, b)
        torch.testing.assert_close(
            out, Wn @ Wn.T, rtol=0, atol=1e-13 * max(1.0, Wn.abs().max() ** 2 * p)
        )
        assert torch.equal(out, out.T), "the Gram matrix must be exactly symmetric"
    else:
        assert out.shape == (m, b)
        assert_close_bound(out, Qd @ Wn.T, products_tol(Qd, Wn, wdtype))
    assert torch.equal(Qg, Q)
    assert_guards_intact(qbuf, Q.numel())
    assert_guards_intact(wbuf, W.numel())


@pytest.mark.parametrize("gram", [False, True], ids=["plain", "gram"])
@pytest.mark.parametrize("wdtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("b", "p"), [(1, 1), (1, 5000), (3, 70), (5, 4099), (16, 3001), (21, 300)])
def test_transform(b, p, wdtype, gram):
    _, W = make(0, b, p, wdtype, wdtype)
    T = torch.randn(b, b, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    T[0] = 0  # a deficient row
    Wg, wbuf = guarded(W)
    out = ops().reorth_transform_(Wg, T, gram)
    Td, Wd = rounded(T, wdtype), W.double()
    tol = (1e-12 if wdtype == torch.float64 else 2e-6) * (Td.abs() @ Wd.abs()) + 1e-30
    assert_close_bound(Wg.double(), Td @ Wd, tol)
    assert (Wg[0] == 0).all()
    Wn = Wg.double()
    if gram:
        torch.testing.assert_close(
            out, Wn @ Wn.T, rtol=0, atol=1e-13 * max(1.0, Wn.abs().max() ** 2 * p)
        )
        assert torch.equal(out, out.T)
    else:
        assert out.numel() == 0 and out.dtype == torch.float64
    assert_guards_intact(wbuf, W.numel())


def test_transform_identity_is_exact():
    _, W = make(0, 4, 1000, torch.float32, torch.float32)
    W2 = W.clone()
    ops().reorth_transform_(W2, torch.eye(4, dtype=torch.float64), False)
    assert torch.equal(W2, W)


def test_gram_resolves_nearly_dependent_vectors():
    """float64 Gram accumulation resolves a Cholesky pivot of 1e-8 relative.

    A float32 accumulation (relative error >= 1e-7 of G) would lose it entirely.
    """
    p = 200_000
    g = torch.Generator().manual_seed(3)
    w = torch.randn(p, generator=g)
    W = torch.stack([w, w + 1e-4 * torch.randn(p, generator=g)])
    G = ops().reorth_transform_(W.clone(), torch.eye(2, dtype=torch.float64), True)
    Wd = W.double()
    exact = Wd @ Wd.T
    torch.testing.assert_close(G, exact, rtol=1e-12, atol=0)
    schur = G[1, 1] - G[0, 1] ** 2 / G[0, 0]
    exact_schur = exact[1, 1] - exact[0, 1] ** 2 / exact[0, 0]
    assert 0 < exact_schur < 1e-7 * exact[1, 1]
    assert abs(schur - exact_schur) < 1e-4 * exact_schur


def test_empty_sizes():
    o = ops()
    Q, W = torch.zeros(3, 0), torch.zeros(2, 0)
    C, n2 = o.reorth_project(Q, W)
    assert torch.equal(C, torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(n2, torch.zeros(2, dtype=torch.float64))
    Q, W = torch.randn(3, 50), torch.zeros(0, 50)
    C, n2 = o.reorth_project(Q, W)
    assert C.shape == (3, 0) and n2.shape == (0,)
    assert o.reorth_update_(Q, W, torch.zeros(3, 0, dtype=torch.float64), False).shape == (3, 0)
    assert o.reorth_transform_(W, torch.zeros(0, 0, dtype=torch.float64), True).shape == (0, 0)
    # m = 0, gram=False: nothing to project on
    W = torch.randn(2, 50)
    D = o.reorth_update_(torch.zeros(0, 50), W, torch.zeros(0, 2, dtype=torch.float64), False)
    assert D.shape == (0, 2)


def test_small_operands_may_be_strided():
    """C and T are tiny: any strides are accepted (read element by element)."""
    Q, W = make(4, 3, 500, torch.float32, torch.float32)
    C = torch.randn(3, 4, dtype=torch.float64).T  # (4, 3), non-contiguous
    W1, W2 = W.clone(), W.clone()
    o = ops()
    torch.testing.assert_close(
        o.reorth_update_(Q, W1, C, False),
        o.reorth_update_(Q, W2, C.contiguous(), False),
        rtol=0,
        atol=0,
    )
    assert torch.equal(W1, W2)


@pytest.mark.parametrize(("wdtype", "qdtype"), DTYPES[1:3], ids=DTYPE_IDS[1:3])
def test_results_independent_of_thread_count(wdtype, qdtype):
    """Fixed reduction chunks: 1 and 2 threads give bitwise identical results."""
    Q, W = make(24, 5, 300_007, wdtype, qdtype)
    C = torch.randn(24, 5, dtype=torch.float64) * 1e-2
    T = torch.randn(5, 5, dtype=torch.float64)
    o = ops()
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            Wt = W.clone()
            r = list(o.reorth_project(Q, Wt))
            r.append(o.reorth_update_(Q, Wt, C, False))
            r.append(o.reorth_update_(Q, Wt, C, True))
            r.append(o.reorth_transform_(Wt, T, True))
            r.append(Wt)
            results.append(r)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------
# Argument checks (the ops must be safe when called directly through torch.ops).
# ------------------------------------------------------------------------------------------


def _q_w(m=4, b=2, p=100, wdtype=torch.float32, qdtype=torch.float32):
    return make(m, b, p, wdtype, qdtype)


@pytest.mark.parametrize(
    ("Q", "W", "match"),
    [
        (
            torch.randn(4, 100),
            torch.randn(2, 100).to(torch.bfloat16),
            "W must be float32 or float64",
        ),
        (torch.randn(4, 100), torch.randn(2, 100).to(torch.int32), "W must be float32 or float64"),
        (torch.randn(4, 100, dtype=torch.float64), torch.randn(2, 100), "unsupported dtypes"),
        (torch.randn(4, 100), torch.randn(2, 100, dtype=torch.float64), "unsupported dtypes"),
        (
            torch.randn(4, 100).to(torch.bfloat16),
            torch.randn(2, 100, dtype=torch.float64),
            "unsupported dtypes",
        ),
        (torch.randn(100, 4).T, torch.randn(2, 100), "Q must be contiguous"),
        (torch.randn(4, 100), torch.randn(100, 2).T, "W must be contiguous"),
        (torch.randn(4, 100), torch.randn(2, 99), "same number of columns"),
        (torch.randn(100), torch.randn(2, 100), r"Q must be 2-D \(m, p\)"),
        (torch.randn(4, 100), torch.randn(2, 100, 1), r"W must be 2-D \(b, p\)"),
    ],
    ids=[
        "W-bf16",
        "W-int",
        "Q-f64-W-f32",
        "Q-f32-W-f64",
        "Q-bf16-W-f64",
        "Q-strided",
        "W-strided",
        "p-mismatch",
        "Q-1d",
        "W-3d",
    ],
)
def test_pair_checks(Q, W, match):
    o = ops()
    C = torch.zeros(Q.shape[0], W.shape[0] if W.dim() else 0, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=match):
        o.reorth_project(Q, W)
    with pytest.raises(RuntimeError, match=match):
        o.reorth_update_(Q, W, C, False)


def test_update_checks():
    o = ops()
    Q, W = _q_w()
    with pytest.raises(RuntimeError, match=r"C must have shape \(m, b\) = \(4, 2\)"):
        o.reorth_update_(Q, W, torch.zeros(2, 4, dtype=torch.float64), False)
    with pytest.raises(RuntimeError, match="C must be Double"):
        o.reorth_update_(Q, W, torch.zeros(4, 2), False)
    # W written in place must not alias the basis
    with pytest.raises(RuntimeError, match="must not share memory with Q"):
        o.reorth_update_(Q, Q[1:3], torch.zeros(4, 2, dtype=torch.float64), True)


def test_transform_checks():
    o = ops()
    _, W = _q_w()
    with pytest.raises(RuntimeError, match=r"T must have shape \(b, b\) = \(2, 2\)"):
        o.reorth_transform_(W, torch.eye(3, dtype=torch.float64), True)
    with pytest.raises(RuntimeError, match="T must be Double"):
        o.reorth_transform_(W, torch.eye(2), True)
    with pytest.raises(RuntimeError, match="W must be contiguous"):
        o.reorth_transform_(torch.randn(100, 2).T, torch.eye(2, dtype=torch.float64), True)
    with pytest.raises(RuntimeError, match="W must be float32 or float64"):
        o.reorth_transform_(W.half(), torch.eye(2, dtype=torch.float64), True)
    with pytest.raises(RuntimeError, match=r"W must be 2-D \(b, p\)"):
        o.reorth_transform_(torch.randn(5), torch.eye(2, dtype=torch.float64), True)


@pytest.mark.parametrize("op", ["reorth_project", "reorth_update_", "reorth_transform_"])
def test_opcheck(op):
    """Schema, aliasing/mutation and fake-tensor consistency (torch.library.opcheck)."""
    import landscape_fast.kernels.cpp.block_reorth  # noqa: F401  (registers the fake impls)

    Q, W = make(5, 3, 300, torch.float32, torch.bfloat16)
    args = {
        "reorth_project": (Q, W),
        "reorth_update_": (Q, W, torch.randn(5, 3, dtype=torch.float64), True),
        "reorth_transform_": (W, torch.randn(3, 3, dtype=torch.float64), True),
    }[op]
    torch.library.opcheck(getattr(ops(), op).default, args)


def test_cpp_backend_glue_runs():
    """The Python glue of the cpp backend drives the three ops end to end."""
    from landscape_fast.kernels.cpp.block_reorth import block_reorth_

    g = torch.Generator().manual_seed(4)
    Q = torch.linalg.qr(torch.randn(3000, 8, dtype=torch.float64, generator=g))[0].T.contiguous()
    W = torch.randn(3, 3000, dtype=torch.float64, generator=g)
    W0 = W.clone()
    C, R = block_reorth_(Q, W, 1e-7)
    torch.testing.assert_close(C.T @ Q + R.T @ W, W0, rtol=0, atol=1e-12)
    torch.testing.assert_close(W @ W.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (Q @ W.T).abs().max() < 1e-12
