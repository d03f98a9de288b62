"""C++/OpenMP ``softmax_ce_hvp`` kernel (``csrc/cpu/softmax_ce_hvp.cpp``) called directly.

``torch.ops.landscape_fast.softmax_ce_hvp_`` against the float64 reference on the same
(already rounded) inputs, for every dtype pair, on shapes that hit the SIMD tails (C = 1,
C below and just past one AVX-512 vector and four of them), the low-precision tangent path
(scratch row), several rows per thread and tangents split across threads. Every input and
output lives inside a NaN-filled guard buffer: a read past an edge poisons the result with
NaN, a stray write shows up as a non-NaN guard. Also: the C++ argument checks, results
independent of the thread count, and ``torch.library.opcheck``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from landscape_fast.reference.softmax_ce_hvp import probabilities
from landscape_fast.reference.softmax_ce_hvp import softmax_ce_hvp_ as reference_

_BUILT = importlib.util.find_spec("landscape_fast._C") is not None
pytestmark = [
    pytest.mark.cpp,
    pytest.mark.skipif(
        not _BUILT,
        reason="landscape_fast._C is not built (run `pip install --no-build-isolation -e .`)",
    ),
]

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
#: (tangent dtype, logits dtype): every combination the kernel instantiates.
DTYPES = [(F64, F64)] + [(u, z) for u in (F32, BF16, F16) for z in (F32, BF16, F16)]
DTYPE_IDS = [f"{str(u)[6:]}-{str(z)[6:]}" for u, z in DTYPES]
#: (k, N, C)
SHAPES = [(1, 1, 1), (2, 3, 7), (3, 2, 16), (1, 4, 17), (5, 3, 64), (2, 2, 65), (17, 2, 129)]
GUARD = 37  # guard elements on each side (odd: misaligns the data)


def ops():
    import landscape_fast._C  # noqa: F401  (registers torch.ops.landscape_fast)

    return torch.ops.landscape_fast


def guarded(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A contiguous copy of ``t`` inside a NaN-filled buffer: ``(view, buffer)``."""
    buf = torch.full((t.numel() + 2 * GUARD,), float("nan"), dtype=t.dtype)
    view = buf[GUARD : GUARD + t.numel()].view(t.shape)
    view.copy_(t)
    return view, buf


def guards_intact(buf: torch.Tensor) -> bool:
    return bool(torch.isnan(buf[:GUARD]).all() and torch.isnan(buf[-GUARD:]).all())


def make(k, N, C, udtype, zdtype, seed=0, weights=True):
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(N, C, dtype=F64, generator=g)).to(zdtype)
    U = torch.randn(k, N, C, dtype=F64, generator=g).to(udtype)
    acc = F64 if udtype == F64 else F32
    w = (torch.rand(N, dtype=F64, generator=g) + 0.5).to(acc) if weights else None
    return z, U, w


def check(z, U, w, got):
    z64, U64 = z.to(F64), U.to(F64)
    want = torch.empty_like(U64)
    reference_(z64, U64, None if w is None else w.to(F64), want)
    p = probabilities(z64, F64)
    s = (p * U64).sum(-1, keepdim=True)
    scale = (p * (U64.abs() + s.abs())).amax(-1, keepdim=True)
    if w is not None:
        scale = scale * w.to(F64)[:, None]
    rtol = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7, F16: 2.0**-10}[U.dtype]
    err = (got.to(F64) - want).abs()
    assert (err <= rtol * (want.abs() + scale) + 1e-300).all(), err.max()


@pytest.mark.parametrize("udtype, zdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k, N, C", SHAPES, ids=[f"k{k}-N{n}-C{c}" for k, n, c in SHAPES])
def test_against_reference_with_guards(udtype, zdtype, k, N, C) -> None:
    z, U, w = make(k, N, C, udtype, zdtype, seed=k + N + C)
    zg, zbuf = guarded(z)
    Ug, Ubuf = guarded(U)
    out, obuf = guarded(torch.full_like(U, float("nan")))
    wg, wbuf = guarded(w)
    ops().softmax_ce_hvp_(zg, Ug, wg, out)
    assert all(guards_intact(b) for b in (zbuf, Ubuf, obuf, wbuf)), "wrote outside a tensor"
    assert torch.equal(Ug, U), "U must not change"
    check(z, U, w, out)


@pytest.mark.parametrize("udtype, zdtype", [(F64, F64), (F32, F32), (BF16, F32)], ids=str)
def test_in_place_and_no_weights(udtype, zdtype) -> None:
    z, U, _ = make(3, 4, 70, udtype, zdtype, weights=False)
    U0 = U.clone()
    ops().softmax_ce_hvp_(z, U, None, U)
    check(z, U0, None, U)


def test_large_rows_several_reduction_vectors() -> None:
    z, U, w = make(3, 3, 32000, F32, F32, seed=4)
    out = torch.empty_like(U)
    ops().softmax_ce_hvp_(z, U, w, out)
    check(z, U, w, out)


def test_results_do_not_depend_on_the_thread_count() -> None:
    old = torch.get_num_threads()
    # N = 1 row with 8 tangents of 20000 classes: the tangents are split across threads;
    # N = 64 short rows: rows are split across threads.
    cases = [make(8, 1, 20000, F32, F32, seed=1), make(3, 64, 600, F64, F64, seed=2)]
    try:
        for z, U, w in cases:
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                out = torch.empty_like(U)
                ops().softmax_ce_hvp_(z, U, w, out)
                outs.append(out)
            assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(old)


def test_zero_weight_rows_are_not_read() -> None:
    z, U, w = make(2, 3, 50, F32, BF16)
    z[1] = float("nan")
    U[:, 1] = float("nan")
    w[1] = 0
    out = torch.full_like(U, 7.0)
    ops().softmax_ce_hvp_(z, U, w, out)
    assert (out[:, 1] == 0).all() and torch.isfinite(out).all()


def test_cpp_argument_checks() -> None:
    op = ops().softmax_ce_hvp_
    z, U, w = make(2, 3, 5, F32, F32)
    out = torch.empty_like(U)
    with pytest.raises(RuntimeError, match="U must be 3-D"):
        op(z, U[0], w, out[0])
    with pytest.raises(RuntimeError, match="U.size\\(2\\) must equal"):
        op(z, U[:, :, :4].contiguous(), w, out)
    with pytest.raises(RuntimeError, match="weights must be Float"):
        op(z, U, w.double(), out)
    with pytest.raises(RuntimeError, match="unsupported dtypes"):
        op(z.double(), U, w, out)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        op(z.T.contiguous().T, U, w, out)
    with pytest.raises(RuntimeError, match="out must be"):
        op(z, U, w, out.double())
    buf = torch.zeros(U.numel() + 3)
    with pytest.raises(RuntimeError, match="must not share memory with U"):
        Ub = buf[: U.numel()].view(U.shape)
        op(z, Ub, w, buf[3:].view(U.shape))
    with pytest.raises(RuntimeError, match="C >= 1"):
        op(torch.zeros(3, 0), torch.zeros(2, 3, 0), None, torch.zeros(2, 3, 0))


def test_opcheck() -> None:
    import landscape_fast.kernels.cpp.softmax_ce_hvp  # noqa: F401  (registers the fake)

    z, U, w = make(2, 3, 9, F32, F32)
    torch.library.opcheck(ops().softmax_ce_hvp_.default, (z, U, w, torch.empty_like(U)))
    torch.library.opcheck(ops().softmax_ce_hvp_.default, (z, U, None, torch.empty_like(U)))
