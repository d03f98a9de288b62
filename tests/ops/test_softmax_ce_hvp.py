"""``softmax_ce_hvp`` on every backend against the float64 reference, plus its contract.

Accuracy rule: per element, ``|out − oracle| <= rtol (|oracle| + scale_jn)`` with
``scale_jn = |w_n| max_c p_nc (|u_jnc| + |s_jn|)`` (the size of the terms that cancel in
``p (u − s)``), ``rtol`` = 1e-12 for float64, 1e-5 for float32 arithmetic and two units
in the last place of a bfloat16/float16 output. The oracle is the reference run in float64
on the inputs exactly as stored.

The contract is checked on each backend's own output: ``H`` is symmetric
(``⟨u, Hv⟩ = ⟨Hu, v⟩``), positive semi-definite (``⟨u, Hu⟩ >= 0``) and annihilates constants
(``H 1 = 0``).
"""

from __future__ import annotations

import pytest
import torch

from landscape_fast import BackendError, _backend
from landscape_fast.ops import softmax_ce_hvp
from landscape_fast.ops.softmax_ce_hvp import selected_backend
from landscape_fast.reference.softmax_ce_hvp import probabilities
from landscape_fast.reference.softmax_ce_hvp import softmax_ce_hvp_ as reference_

BACKENDS = ("reference", "cpp", "triton", "cuda")
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
#: (tangent dtype, logits dtype)
DTYPES = [(F64, F64), (F32, F32), (F32, BF16), (F32, F16), (BF16, F32), (BF16, BF16), (F16, F16)]
DTYPE_IDS = ["f64", "f32", "f32-bf16z", "f32-f16z", "bf16-f32z", "bf16", "f16"]
RTOL = {F64: 1e-12, F32: 1e-5, BF16: 2 * 2.0**-8, F16: 2 * 2.0**-11}
#: (N, C, k): one class (output 0), two classes, odd sizes, k = 1 and 17, C past a
#: power of two and several SIMD vectors / Triton chunks.
SHAPES = [
    (1, 1, 1),
    (3, 2, 1),
    (5, 37, 3),
    (4, 100, 17),
    (2, 1000, 2),
    (3, 4099, 2),
]
KINDS = ["random", "huge", "masked", "zero_weight"]


def _device(backend: str) -> str:
    return (
        "cuda"
        if backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
        else "cpu"
    )


def _skip_if_unavailable(backend: str) -> None:
    why = _backend.BACKENDS[backend].unavailable_reason()
    if why is not None:
        pytest.skip(f"{backend}: {why}")


def _skip_unless_runs(backend: str, *tensors: torch.Tensor) -> None:
    _skip_if_unavailable(backend)
    reasons = _backend.BACKENDS[backend].refusal_reasons(tensors)
    if reasons:
        pytest.skip(f"{backend}: {'; '.join(reasons)}")


def make(N: int, C: int, k: int, udtype, zdtype, kind: str = "random", seed: int = 0):
    """``(logits, U, weights)`` on the CPU, weights float64 (the op converts them)."""
    gen = torch.Generator().manual_seed(seed + 1000 * N + C)
    z = 2.0 * torch.randn(N, C, dtype=F64, generator=gen)
    U = torch.randn(k, N, C, dtype=F64, generator=gen)
    w = torch.rand(N, dtype=F64, generator=gen) + 0.5
    if kind == "huge":
        z = 1e4 * torch.randn(N, C, dtype=F64, generator=gen)
        z[:, : C // 2] += 1e4  # ties and near-ties at the top
    elif kind == "masked":
        mask = torch.rand(N, C, generator=gen) < 0.4
        z[mask] = float("-inf")
        z[0] = float("-inf")  # a row with no admissible class: p = 0, output 0
    elif kind == "zero_weight":
        w[0] = 0.0
        z[0] = float("nan")  # never read
        U[:, 0] = float("nan")
        if N > 2:
            w[2] = 0.0
    return z.to(zdtype), U.to(udtype), w


def oracle(z: torch.Tensor, U: torch.Tensor, w: torch.Tensor | None):
    """float64 reference on the inputs as stored, and the per-(j, n) cancellation scale."""
    z64, U64 = z.cpu().to(F64), U.cpu().to(F64)
    out = torch.empty_like(U64)
    w64 = None if w is None else w.cpu().to(F64)
    reference_(z64, U64, w64, out)
    p = probabilities(z64, F64)
    s = (p * U64).sum(-1, keepdim=True)
    scale = (p * (U64.abs() + s.abs())).nan_to_num(0.0).amax(-1, keepdim=True)
    if w64 is not None:
        scale = scale * w64.abs()[:, None]
    return out, scale


def assert_matches(got: torch.Tensor, z, U, w, what: str = "") -> None:
    want, scale = oracle(z, U, w)
    rtol = RTOL[F64] if U.dtype == F64 else max(RTOL[F32], RTOL.get(U.dtype, 0.0))
    got64 = got.cpu().to(F64)
    assert got64.shape == want.shape
    err = (got64 - want).abs()
    bound = rtol * (want.abs() + scale) + 1e-300
    bad = ~(err <= bound)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} elements off; first at flat index {i}: got "
            f"{got64.flatten()[i].item():.6e}, want {want.flatten()[i].item():.6e} "
            f"(bound {bound.flatten()[i].item():.2e})"
        )


def _too_big_for_interpreter(backend: str, N: int, C: int, k: int) -> bool:
    return backend == "triton" and _backend.triton_interpret() and N * C * k > 30_000


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("udtype, zdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("N, C, k", SHAPES, ids=lambda s: str(s))
def test_random_shapes(backend, udtype, zdtype, N, C, k) -> None:
    if _too_big_for_interpreter(backend, N, C, k):
        pytest.skip("shape too large for the Triton interpreter")
    z, U, w = make(N, C, k, udtype, zdtype)
    _skip_if_unavailable(backend)
    device = _device(backend)
    z, U, w = z.to(device), U.to(device), w.to(device)
    _skip_unless_runs(backend, z, U)
    U_in = U.clone()
    out = softmax_ce_hvp(z, U, weights=w, backend=backend)
    assert torch.equal(U, U_in), "U must not change without out=U"
    assert out.shape == U.shape and out.dtype == U.dtype and out.device == U.device
    assert_matches(out, z, U, w, f"{backend} {udtype}/{zdtype} {(N, C, k)}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("udtype, zdtype", [DTYPES[0], DTYPES[1], DTYPES[5]], ids=lambda d: str(d))
@pytest.mark.parametrize("kind", KINDS[1:])
def test_degenerate_inputs(backend, udtype, zdtype, kind) -> None:
    z, U, w = make(4, 33, 3, udtype, zdtype, kind=kind, seed=1)
    _skip_if_unavailable(backend)
    device = _device(backend)
    z, U, w = z.to(device), U.to(device), w.to(device)
    _skip_unless_runs(backend, z, U)
    out = softmax_ce_hvp(z, U, weights=w, backend=backend)
    assert_matches(out, z, U, w, f"{backend} {kind}")
    assert torch.isfinite(out.float()).all()
    if kind == "zero_weight":
        assert (out[:, 0] == 0).all() and (out[:, 2] == 0).all()
    if kind == "masked":
        assert (out[:, 0] == 0).all()
        assert (out.cpu()[:, z.cpu() == float("-inf")] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F32])
def test_hessian_is_symmetric_psd_and_kills_constants(backend, dtype) -> None:
    N, C = 6, 50
    gen = torch.Generator().manual_seed(7)
    z = (3 * torch.randn(N, C, dtype=F64, generator=gen)).to(dtype)
    u = torch.randn(N, C, dtype=F64, generator=gen).to(dtype)
    v = torch.randn(N, C, dtype=F64, generator=gen).to(dtype)
    w = torch.rand(N, dtype=F64, generator=gen).to(dtype)
    _skip_if_unavailable(backend)
    device = _device(backend)
    z, u, v, w = z.to(device), u.to(device), v.to(device), w.to(device)
    _skip_unless_runs(backend, z, u)
    Hu = softmax_ce_hvp(z, u, weights=w, backend=backend).to(F64)
    Hv = softmax_ce_hvp(z, v, weights=w, backend=backend).to(F64)
    H1 = softmax_ce_hvp(z, torch.ones_like(u), backend=backend).to(F64)
    u64, v64 = u.to(F64), v.to(F64)
    eps = torch.finfo(dtype).eps
    # per sample: <u_n, H_n v_n> = <H_n u_n, v_n>
    uHv, Huv = (u64 * Hv).sum(-1), (Hu * v64).sum(-1)
    bound = 20 * eps * ((u64.abs() * Hv.abs()).sum(-1) + (Hu.abs() * v64.abs()).sum(-1) + 1e-30)
    assert ((uHv - Huv).abs() <= bound).all(), (uHv - Huv).abs().max()
    uHu = (u64 * Hu).sum(-1)
    assert (uHu >= -20 * eps * (u64.abs() * Hu.abs()).sum(-1)).all(), uHu.min()
    assert H1.abs().max() <= 10 * eps


def test_single_tangent_and_out_buffers() -> None:
    z, U, w = make(3, 20, 2, F64, F64)
    full = softmax_ce_hvp(z, U, weights=w)
    one = softmax_ce_hvp(z, U[1], weights=w)
    assert one.shape == (3, 20)
    torch.testing.assert_close(one, full[1], rtol=0, atol=0)
    buf = torch.full_like(U, float("nan"))
    res = softmax_ce_hvp(z, U, weights=w, out=buf)
    assert res is buf and torch.equal(buf, full)
    U2 = U.clone()
    res = softmax_ce_hvp(z, U2, weights=w, out=U2)  # in place
    assert res is U2 and torch.equal(U2, full)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_in_place_on_every_backend(backend) -> None:
    z, U, w = make(3, 40, 5, F32, F32)
    _skip_unless_runs(backend, z, U)
    want = softmax_ce_hvp(z, U, weights=w, backend="reference")
    res = softmax_ce_hvp(z, U, weights=w, out=U, backend=backend)
    assert res is U
    torch.testing.assert_close(U, want, rtol=1e-5, atol=1e-6)


def test_empty_inputs() -> None:
    z = torch.zeros(0, 7)
    assert softmax_ce_hvp(z, torch.zeros(3, 0, 7)).shape == (3, 0, 7)
    assert softmax_ce_hvp(z, torch.zeros(0, 7)).shape == (0, 7)
    assert softmax_ce_hvp(torch.zeros(2, 7), torch.zeros(0, 2, 7)).shape == (0, 2, 7)


def test_non_contiguous_logits_and_weights_are_accepted() -> None:
    z, U, w = make(4, 9, 2, F64, F64)
    zt = z.T.contiguous().T  # same values, column-major
    w2 = torch.stack([w, w], 1)[:, 0]
    assert not zt.is_contiguous() and not w2.is_contiguous()
    torch.testing.assert_close(
        softmax_ce_hvp(zt, U, weights=w2), softmax_ce_hvp(z, U, weights=w), rtol=0, atol=0
    )


def test_weights_are_converted_to_the_arithmetic_dtype() -> None:
    z, U, w = make(4, 9, 2, F32, F32)
    a = softmax_ce_hvp(z, U, weights=w)  # float64 weights, float32 tangents
    b = softmax_ce_hvp(z, U, weights=w.float())
    assert torch.equal(a, b)


def test_backend_forcing(monkeypatch: pytest.MonkeyPatch) -> None:
    z, U, _ = make(2, 5, 1, F32, F32)
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    cpp_ok = _backend.BACKENDS["cpp"].unavailable_reason() is None
    assert selected_backend(z, U) == ("cpp" if cpp_ok else "reference")
    assert selected_backend(z, U, backend="reference") == "reference"
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert selected_backend(z, U) == "reference"
    assert selected_backend(z, U, backend="auto") == ("cpp" if cpp_ok else "reference")
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    with pytest.raises(BackendError, match="'cuda' was forced") as err:
        softmax_ce_hvp(z, U)
    assert "reference: usable" in str(err.value) and _backend.ENV_VAR in str(err.value)
    monkeypatch.delenv(_backend.ENV_VAR)
    with pytest.raises(BackendError, match="unknown backend"):
        softmax_ce_hvp(z, U, backend="fortran")


def _bad(**kw):
    base = dict(logits=torch.zeros(2, 3), U=torch.zeros(2, 2, 3))
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "args, error, match",
    [
        (_bad(logits=torch.zeros(2, 3, 1)), ValueError, "logits must be \\(N, C\\)"),
        (_bad(U=torch.zeros(2, 3, 3)), ValueError, "U must be \\(N, C\\) .* or \\(k, N, C\\)"),
        (_bad(U=torch.zeros(3)), ValueError, "U must be"),
        (_bad(logits=torch.zeros(2, 0), U=torch.zeros(2, 0)), ValueError, "C = 0"),
        (_bad(weights=torch.ones(3)), ValueError, "weights must be a vector of N = 2"),
        (_bad(weights=torch.ones(2, dtype=torch.int64)), TypeError, "floating point"),
        (_bad(out=torch.zeros(2, 3)), ValueError, "out must have U's shape"),
        (_bad(out=torch.zeros(2, 2, 3, dtype=F64)), TypeError, "out must have U's dtype"),
        (_bad(out=torch.zeros(3, 2, 2).transpose(0, 2)), ValueError, "out must be contiguous"),
        (_bad(U=torch.zeros(2, 2, 3, dtype=torch.int32)), TypeError, "U must be float32"),
        (_bad(logits=torch.zeros(2, 3, dtype=F64)), TypeError, "float64 logits need float64"),
        (_bad(U=torch.zeros(2, 2, 3, dtype=F64)), TypeError, "logits.double"),
        (_bad(U=torch.zeros(3, 2, 2).transpose(0, 2)), ValueError, "U must be contiguous"),
        (_bad(logits=torch.zeros(2, 3, device="meta")), ValueError, "one device"),
        (_bad(U=torch.zeros(2, 2, 3, requires_grad=True)), ValueError, "must not require grad"),
        (_bad(logits=torch.zeros(2, 3, requires_grad=True)), ValueError, "logits must not"),
        (_bad(U=torch.zeros(2, 2, 3).numpy()), TypeError, "U must be a torch.Tensor"),
        (_bad(logits=None), TypeError, "logits must be a torch.Tensor"),
    ],
)
def test_bad_inputs_get_clear_errors(args, error, match) -> None:
    logits, U = args.pop("logits"), args.pop("U")
    with pytest.raises(error, match=match):
        softmax_ce_hvp(logits, U, **args)


def test_overlapping_out_is_refused() -> None:
    buf = torch.zeros(40)
    U = buf[:24].view(2, 3, 4)
    z = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="partially overlaps U"):
        softmax_ce_hvp(z, U, out=buf[4:28].view(2, 3, 4))
    with pytest.raises(ValueError, match="share memory with logits"):
        softmax_ce_hvp(buf[:12].view(3, 4), torch.zeros(1, 3, 4), out=buf[8:20].view(1, 3, 4))
    with pytest.raises(ValueError, match="share memory with weights"):
        softmax_ce_hvp(z, torch.zeros(3, 4), weights=buf[:3], out=buf[:12].view(3, 4))
