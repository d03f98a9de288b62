"""Tests of the CUDA ``softmax_ce_hvp`` kernel (``csrc/cuda/softmax_ce_hvp.cu``).

Tiers (as for ``block_reorth``, see ``test_cuda_block_reorth.py``, which also compile-checks
every ``csrc/cuda/*.cu`` with ``-Werror all-warnings``):

* **library** (wherever the package's CUDA library was built): it exports this kernel's
  C ABI.
* **emulation** (wherever a C++ compiler and the CUDA headers exist, ~10 s): the kernel
  source compiled as C++ against ``tests/kernels/cuda_emulation.h`` (warp shuffles become
  exchanges between barriers, see the ``.cu`` file) runs on CPU tensors through the real
  launcher: every dtype pair against the float64 reference, odd and degenerate shapes,
  masked and ignored rows, in place, a grid smaller than the number of rows (grid-stride
  loop), thread orders per barrier interval (forward, reverse, shuffled: a missing barrier
  gives wrong results in one of them), bitwise-identical results across orders, and NaN
  canaries around every buffer.
* **gpu** (``pytest.mark.gpu``): the same checks with an nvcc-built library on a CUDA device,
  plus language-model shapes and the public op.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import pytest
import torch

from landscape_fast import _backend
from landscape_fast._nvcc import find_nvcc
from landscape_fast.kernels.cuda import softmax_ce_hvp as cu
from landscape_fast.reference.softmax_ce_hvp import probabilities
from landscape_fast.reference.softmax_ce_hvp import softmax_ce_hvp_ as reference_
from landscape_fast.testing import softmax_ce_inputs
from tests.kernels.cuda_tools import build_emulation
from tests.kernels.cuda_tools import cuda_include as _cuda_include
from tests.kernels.cuda_tools import cxx as _cxx
from tests.kernels.cuda_tools import run as _run

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "csrc" / "cuda" / "softmax_ce_hvp.cu"
EMULATION_HEADER = Path(__file__).resolve().parent / "cuda_emulation.h"

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
#: (tangent dtype, logits dtype)
DTYPES = [(F64, F64), (F32, F32), (F32, BF16), (BF16, F32), (BF16, BF16), (F16, F16)]
DTYPE_IDS = ["f64", "f32", "f32-bf16z", "bf16-f32z", "bf16", "f16"]
PAD = 64  # guard elements on each side of every buffer


# ---------------------------------------------------------------------------------------
# Inputs, guards and the float64 oracle


make = softmax_ce_inputs


class Guards:
    """Buffers inside NaN-filled guard regions; check() verifies the guards."""

    def __init__(self) -> None:
        self.bufs: list[torch.Tensor] = []

    def place(self, t: torch.Tensor) -> torch.Tensor:
        n = t.numel()
        buf = torch.full((n + 2 * PAD,), float("nan"), dtype=t.dtype, device=t.device)
        view = buf[PAD : PAD + n].view(t.shape)
        view.copy_(t)
        self.bufs.append(buf)
        return view

    def check(self) -> None:
        for buf in self.bufs:
            edges = torch.cat([buf[:PAD], buf[-PAD:]])
            assert torch.isnan(edges).all(), "a kernel wrote outside its buffer"


def check_against_reference(z, U, w, got) -> None:
    z64, U64 = z.cpu().to(F64), U.cpu().to(F64)
    w64 = None if w is None else w.cpu().to(F64)
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


def run_checked(lib, k, N, C, udtype, zdtype, kind="random", seed=0, device="cpu", index=0):
    z, U, w = make(k, N, C, udtype, zdtype, seed=seed, kind=kind, device=device)
    g = Guards()
    zg, Ug, wg = g.place(z), g.place(U), g.place(w)
    out = g.place(torch.full_like(U, float("nan")))
    stream = torch.cuda.current_stream(device).cuda_stream if device != "cpu" else 0
    cu.softmax_ce_hvp_with(lib, zg, Ug, wg, out, index, stream)
    if device != "cpu":
        torch.cuda.synchronize()
    g.check()
    assert torch.equal(Ug.cpu().nan_to_num(), U.cpu().nan_to_num()), "U changed"
    check_against_reference(z, U, w, out)
    return out


# ---------------------------------------------------------------------------------------
# Library tier


@pytest.mark.skipif(_backend._cuda_library_path() is None, reason="CUDA library not built")
def test_installed_library_exports_the_abi() -> None:
    lib = cu.load_library(_backend._cuda_library_path())  # missing symbol -> AttributeError
    assert lib.lf_softmax_ce_hvp_threads() == 256
    assert lib.lf_softmax_ce_hvp_tangents_per_pass() == 4


# ---------------------------------------------------------------------------------------
# Emulation tier

needs_emulation = pytest.mark.skipif(
    _cxx() is None or _cuda_include() is None,
    reason="needs a C++ compiler and the CUDA headers (cuda_runtime.h, cuda_bf16.h)",
)


@functools.cache
def _emulation_library(out_dir: str) -> ctypes.CDLL:
    out = Path(out_dir) / "softmax_ce_hvp_emu.so"
    return build_emulation(SOURCE, out, EMULATION_HEADER, cu.load_library)


@pytest.fixture(scope="module")
def emu_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cuda_emulation_sce"))


def emulated(emu_dir: str, order: int = 0, sms: int = 132) -> ctypes.CDLL:
    lib = _emulation_library(emu_dir)
    lib.lf_emu_configure(order, 1234, sms, 232448, 233472)
    return lib


#: (k, N, C): C = 1, C < threads, C just past the 256 threads of a CTA and several strides,
#: k not a multiple of the 4 tangents per pass, k = 17.
SHAPES = [(1, 1, 1), (3, 2, 2), (5, 3, 37), (2, 2, 257), (17, 1, 40), (1, 2, 700)]


@needs_emulation
@pytest.mark.parametrize("udtype, zdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k, N, C", SHAPES, ids=[f"k{k}-N{n}-C{c}" for k, n, c in SHAPES])
def test_emulated_against_reference(emu_dir, udtype, zdtype, k, N, C) -> None:
    run_checked(emulated(emu_dir), k, N, C, udtype, zdtype, seed=k + N + C)


@needs_emulation
@pytest.mark.parametrize("kind", ["masked", "zero_weight", "huge"])
@pytest.mark.parametrize("udtype, zdtype", [DTYPES[0], DTYPES[1]], ids=DTYPE_IDS[:2])
def test_emulated_degenerate_rows(emu_dir, kind, udtype, zdtype) -> None:
    out = run_checked(emulated(emu_dir), 3, 3, 50, udtype, zdtype, kind=kind, seed=5)
    assert torch.isfinite(out).all()
    if kind == "zero_weight":
        assert (out[:, 0] == 0).all()
    if kind == "masked":
        assert (out[:, -1] == 0).all()


@needs_emulation
@pytest.mark.parametrize("order", [1, 2], ids=["reverse", "shuffled"])
def test_emulated_thread_orders_and_grid_stride(emu_dir, order) -> None:
    """One SM: a grid of 8 CTAs strides over 11 rows; threads run in another order per
    barrier interval. Results are bitwise identical to the forward order."""
    outs = []
    for o in (0, order):
        outs.append(run_checked(emulated(emu_dir, order=o, sms=1), 5, 11, 300, F32, F32))
    assert torch.equal(outs[0], outs[1])


@needs_emulation
def test_emulated_in_place_and_without_weights(emu_dir) -> None:
    lib = emulated(emu_dir)
    z, U, _ = make(6, 3, 90, F32, F16, seed=9)
    U0 = U.clone()
    cu.softmax_ce_hvp_with(lib, z, U, None, U, 0, 0)
    check_against_reference(z, U0, None, U)


@needs_emulation
def test_emulated_launcher_rejects_bad_arguments(emu_dir) -> None:
    lib = emulated(emu_dir)
    code = lib.lf_softmax_ce_hvp(0, 1, None, None, None, None, 1, 1, 1, 0, None)
    assert code != 0  # float32 logits with float64 tangents
    assert lib.lf_softmax_ce_hvp(0, 0, None, None, None, None, 1, 1, 0, 0, None) != 0  # C = 0
    assert lib.lf_softmax_ce_hvp(0, 0, None, None, None, None, 0, 1, 1, 0, None) == 0  # empty
    z, U, w = make(2, 2, 5, F32, F32)
    with pytest.raises(TypeError, match="unsupported dtypes"):
        cu.softmax_ce_hvp_with(lib, z.double(), U, w, torch.empty_like(U), 0, 0)
    with pytest.raises(ValueError, match="weights must be"):
        cu.softmax_ce_hvp_with(lib, z, U, w.double(), torch.empty_like(U), 0, 0)
    with pytest.raises(ValueError, match="contiguous"):
        cu.softmax_ce_hvp_with(lib, z.T.contiguous().T, U, w, torch.empty_like(U), 0, 0)
    with pytest.raises(ValueError, match="CUDA tensors"):
        cu.softmax_ce_hvp_(z, U, w, torch.empty_like(U))


# ---------------------------------------------------------------------------------------
# GPU tier


@pytest.fixture(scope="module")
def gpu_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    out = tmp_path_factory.mktemp("cuda_sce") / "softmax_ce_hvp.so"
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-cudart", "static",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", str(SOURCE), "-o", str(out)]  # fmt: skip
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cu.load_library(out)


@pytest.mark.gpu
@pytest.mark.parametrize("udtype, zdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k, N, C", [*SHAPES, (8, 256, 32000), (3, 5000, 10), (17, 3, 100_003)])
def test_gpu_against_reference(gpu_lib, udtype, zdtype, k, N, C) -> None:
    dev = torch.device("cuda", torch.cuda.current_device())
    run_checked(gpu_lib, k, N, C, udtype, zdtype, seed=C, device=dev, index=dev.index)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["masked", "zero_weight", "huge"])
def test_gpu_degenerate_rows(gpu_lib, kind) -> None:
    dev = torch.device("cuda", torch.cuda.current_device())
    out = run_checked(gpu_lib, 5, 64, 3000, F32, F32, kind=kind, device=dev, index=dev.index)
    assert torch.isfinite(out).all()


@pytest.mark.gpu
def test_gpu_bitwise_reproducible_and_side_stream(gpu_lib) -> None:
    dev = torch.device("cuda", torch.cuda.current_device())
    z, U, w = make(8, 512, 32000, F32, BF16, device=dev)
    first = torch.empty_like(U)
    cu.softmax_ce_hvp_with(gpu_lib, z, U, w, first, dev.index, 0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        again = torch.empty_like(U)
        cu.softmax_ce_hvp_with(gpu_lib, z, U, w, again, dev.index, s.cuda_stream)
    s.synchronize()
    assert torch.equal(first, again)


@pytest.mark.gpu
def test_gpu_public_op() -> None:
    from landscape_fast.ops import softmax_ce_hvp

    why = _backend.BACKENDS["cuda"].unavailable_reason()
    if why is not None:
        pytest.skip(f"cuda backend not installed: {why}")
    z, U, w = make(8, 256, 32000, F32, F32, device="cuda")
    out = softmax_ce_hvp(z, U, weights=w, backend="cuda")
    check_against_reference(z, U, w, out)
    softmax_ce_hvp(z, U, weights=w, out=U, backend="cuda")
    torch.testing.assert_close(U, out, rtol=0, atol=0)
