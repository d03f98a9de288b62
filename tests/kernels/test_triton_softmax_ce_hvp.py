"""Triton ``softmax_ce_hvp`` kernel against the float64 reference.

Runs on a CUDA device, or on CPU under the Triton interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` when there is no GPU), so shapes are tiny; tiny tile configs make them
cover every path anyway: several ``BLOCK_C`` chunks per row with a ragged last one, several
``BLOCK_K`` blocks of tangents with a partial last one, masked and zero-weight rows.

Every kernel input and output lives inside a NaN-filled guard buffer: an unmasked read past
an edge poisons the result, and a stray write shows up as a non-NaN guard.

Note: the interpreter converts float32 to bfloat16 by truncation (a GPU rounds to nearest),
so bfloat16 outputs are compared to two units in the last place.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import pytest
import torch

from landscape_fast.reference.softmax_ce_hvp import probabilities
from landscape_fast.reference.softmax_ce_hvp import softmax_ce_hvp_ as reference_
from landscape_fast.testing import softmax_ce_inputs

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
F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPES = [(F64, F64), (F32, F32), (F32, BF16), (BF16, F32), (F16, F16)]
DTYPE_IDS = ["f64", "f32", "f32-bf16z", "bf16-f32z", "f16"]
GUARD = 64


@pytest.fixture(scope="module")
def K():
    """The kernel module, imported only once the skip conditions have passed."""
    return importlib.import_module("landscape_fast.kernels.triton.softmax_ce_hvp")


def _guarded(t: torch.Tensor) -> torch.Tensor:
    n = t.numel()
    buf = torch.full((n + 2 * GUARD,), float("nan"), dtype=t.dtype, device=DEVICE)
    view = buf[GUARD : GUARD + n].view(t.shape)
    view.copy_(t)
    view._guard_buffer = buf
    return view


def _guards_intact(t: torch.Tensor) -> bool:
    buf = t._guard_buffer
    return bool(torch.isnan(buf[:GUARD]).all() and torch.isnan(buf[-GUARD:]).all())


_make = softmax_ce_inputs


def _check(z, U, w, got):
    z64, U64, w64 = z.cpu().to(F64), U.cpu().to(F64), None if w is None else w.cpu().to(F64)
    want = torch.empty_like(U64)
    reference_(z64, U64, w64, want)
    p = probabilities(z64, F64)
    s = (p * U64).sum(-1, keepdim=True)
    scale = (p * (U64.abs() + s.abs())).nan_to_num(0.0).amax(-1, keepdim=True)
    if w64 is not None:
        scale = scale * w64[:, None]
    rtol = {F64: 1e-12, F32: 1e-5, BF16: 2.0**-7, F16: 2.0**-10}[U.dtype]
    err = (got.cpu().to(F64) - want).abs()
    assert (err <= rtol * (want.abs() + scale) + 1e-300).all(), err.max()


#: (k, N, C, config): "default" = GPU tiles (one masked chunk at these C), "tiny" =
#: BLOCK_C = 16, BLOCK_K = 4 (several chunks and tangent blocks, ragged edges).
SHAPES = [
    pytest.param(1, 1, 1, "default", id="k1-C1"),
    pytest.param(3, 2, 37, "default", id="one-chunk"),
    pytest.param(6, 3, 37, "tiny", id="chunks-and-tangent-blocks"),
    pytest.param(17, 2, 50, "tiny", id="k17"),
    pytest.param(2, 2, 2, "tiny", id="C2"),
]


def _config(K, name):
    return None if name == "default" else K.TileConfig(block_c=16, block_k=4)


@pytest.mark.parametrize("udtype, zdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k, N, C, config", SHAPES)
def test_against_reference_with_guards(K, udtype, zdtype, k, N, C, config) -> None:
    z, U, w = _make(k, N, C, udtype, zdtype, seed=k * N + C)
    zg, Ug, wg = _guarded(z), _guarded(U), _guarded(w)
    out = _guarded(torch.full_like(U, float("nan")))
    K.softmax_ce_hvp_(zg, Ug, wg, out, config=_config(K, config))
    assert all(_guards_intact(t) for t in (zg, Ug, wg, out)), "wrote outside a tensor"
    _check(z, U, w, out)


@pytest.mark.parametrize("kind", ["masked", "zero_weight"])
@pytest.mark.parametrize("udtype, zdtype", [DTYPES[0], DTYPES[1]], ids=DTYPE_IDS[:2])
def test_masked_and_ignored_rows(K, kind, udtype, zdtype) -> None:
    z, U, w = _make(5, 4, 40, udtype, zdtype, seed=3, kind=kind)
    z, U, w = z.to(DEVICE), U.to(DEVICE), w.to(DEVICE)
    out = torch.empty_like(U)
    K.softmax_ce_hvp_(z, U, w, out, config=K.TileConfig(block_c=16, block_k=2))
    assert torch.isfinite(out).all()
    if kind == "zero_weight":
        assert (out[:, 0] == 0).all()
    else:
        assert (out[:, -1] == 0).all()
    _check(z, U, w, out)


def test_in_place_without_weights(K) -> None:
    z, U, _ = _make(3, 3, 45, F32, F32)
    z, U = z.to(DEVICE), U.to(DEVICE)
    U0 = U.clone()
    K.softmax_ce_hvp_(z, U, None, U, config=K.TileConfig(block_c=16, block_k=2))
    _check(z, U0, None, U)


def test_plan_respects_the_config(K) -> None:
    assert K.plan(1, 1) == (1, 1, 4)
    assert K.plan(17, 32000) == (8, 1024, 8)
    assert K.plan(3, 100, K.TileConfig(block_c=16, block_k=2)) == (2, 16, 4)
    assert K.plan(64, 50000, K.TileConfig(block_k=64, tile_elems=4096))[:2] == (64, 64)
    with pytest.raises(ValueError, match="power of two"):
        K.TileConfig(block_c=24)


def test_rejects_bad_arguments(K) -> None:
    z, U, w = _make(2, 3, 5, F32, F32)
    with pytest.raises(ValueError, match="must be \\(N, C\\)"):
        K.softmax_ce_hvp_(z, U[0], w, U[0])
    with pytest.raises(TypeError, match="unsupported dtypes"):
        K.softmax_ce_hvp_(z.double(), U, w, torch.empty_like(U))
    with pytest.raises(ValueError, match="contiguous"):
        K.softmax_ce_hvp_(z.T.contiguous().T, U, w, torch.empty_like(U))
