"""Tests of the CUDA ``block_reorth`` kernels (``csrc/cuda/block_reorth.cu``).

Three tiers:

* **build** (wherever nvcc exists, ~10-20 s): every ``csrc/cuda/*.cu`` compiles for sm_90
  with ``-Werror all-warnings``; the objects link into a ``-cudart static`` shared library
  (setup.py's flags) that ctypes loads, with every symbol of the C ABI; the device probe
  answers with an error code, not a crash, where there is no GPU or driver.
* **emulation** (wherever a C++ compiler and the CUDA headers exist, ~10 s): the same
  kernel source, compiled as C++ against ``tests/kernels/cuda_emulation.h``, runs on CPU
  tensors through the real launchers and planning code: every primitive and the full op
  against float64 references for all dtype pairs, odd and degenerate shapes, three thread
  orders per barrier interval (missing barriers show up as wrong results), shared-memory
  limits that force the global-memory fallbacks, misaligned pointers, and NaN canaries
  around every buffer (out-of-bounds writes change them, out-of-bounds reads and reads of
  uninitialised shared memory produce NaN).
* **gpu** (``pytest.mark.gpu``): the same checks with the nvcc-built library on a CUDA
  device, plus large shapes, bitwise reproducibility and the public op.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from landscape_fast._nvcc import find_nvcc
from landscape_fast.kernels.block_reorth_driver import cgs2_cholqr2
from landscape_fast.kernels.cuda import block_reorth as cu
from landscape_fast.ops.block_reorth import DEFAULT_RANK_TOL
from landscape_fast.reference.block_reorth import block_reorth_ as reference_block_reorth
from landscape_fast.testing import REORTH_DTYPE_IDS, REORTH_DTYPE_PAIRS
from tests.kernels.cuda_tools import build_emulation
from tests.kernels.cuda_tools import cuda_include as _cuda_include
from tests.kernels.cuda_tools import cxx as _cxx
from tests.kernels.cuda_tools import run as _run

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
EMULATION_HEADER = Path(__file__).resolve().parent / "cuda_emulation.h"

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
#: (basis dtype, block dtype) pairs the kernels support (the op's list, basis first).
PAIRS = [(q, w) for w, q in REORTH_DTYPE_PAIRS]
PAIR_IDS = REORTH_DTYPE_IDS
TOL = DEFAULT_RANK_TOL  # rank_tol of the op


# ---------------------------------------------------------------------------------------
# Toolchain discovery


needs_nvcc = pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found (no CUDA toolkit)")


# ---------------------------------------------------------------------------------------
# Build tier


def _gpu_arch() -> str | None:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}{minor}"
    return None


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Compile every .cu (sm_90 plus the local GPU's arch, -Werror) and link the library."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit)")
    out = tmp_path_factory.mktemp("cuda_build")
    archs = ["90"]
    if _gpu_arch() and _gpu_arch() not in archs:
        archs.append(_gpu_arch())
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    objects, logs = [], {}
    for src in SOURCES:
        obj = out / f"{src.stem}.o"
        cmd = [nvcc, "-c", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Werror",
               "all-warnings", *gencode, str(src), "-o", str(obj)]  # fmt: skip
        proc = _run(cmd)
        logs[src.name] = (proc.returncode, proc.stdout + proc.stderr)
        objects.append(obj)
    lib = out / "_cuda_kernels.so"
    link = None
    if all(code == 0 for code, _ in logs.values()):
        link = _run([nvcc, "-shared", "-cudart", "static", "-o", str(lib), *map(str, objects)])
    return {"logs": logs, "lib": lib, "link": link, "archs": archs}


@needs_nvcc
def test_every_cuda_source_compiles_without_warnings(cuda_build: dict) -> None:
    assert SOURCES, "no csrc/cuda/*.cu files"
    for name, (code, log) in cuda_build["logs"].items():
        assert code == 0, f"{name} failed to compile with -Werror all-warnings:\n{log}"
        assert "warning" not in log.lower(), f"{name} compiled with warnings:\n{log}"


@needs_nvcc
def test_shared_library_links_and_exports_the_abi(cuda_build: dict) -> None:
    link = cuda_build["link"]
    assert link is not None and link.returncode == 0, link and link.stderr
    lib = cu.load_library(cuda_build["lib"])  # declares every signature: missing -> error
    for name in cu.SIGNATURES:
        assert hasattr(lib, name), name
    assert lib.lf_reorth_max_block() == 64


@needs_nvcc
def test_device_probe_returns_a_code_instead_of_crashing(cuda_build: dict) -> None:
    assert cuda_build["link"] is not None and cuda_build["link"].returncode == 0
    code = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(cuda_build['lib'])!r})\n"
        "lib.lf_cuda_error_string.restype = ctypes.c_char_p\n"
        "n = lib.lf_cuda_device_count()\n"
        "print(n, (lib.lf_cuda_error_string(-n) or b'').decode() if n < 0 else '')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"probe crashed (rc={proc.returncode}):\n{proc.stderr}"
    count_text, _, message = proc.stdout.strip().partition(" ")
    count = int(count_text)
    if torch.cuda.is_available():
        assert count == torch.cuda.device_count()
    else:
        assert count <= 0  # e.g. -35 (insufficient driver) or -100 (no device)
        if count < 0:
            assert message  # cudaGetErrorString's text for the code


# ---------------------------------------------------------------------------------------
# Runners: the same checks against the emulated kernels (CPU) and the real ones (GPU)


@dataclass
class Runner:
    lib: ctypes.CDLL
    device: torch.device
    index: int

    def stream(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.current_stream(self.device).cuda_stream
        return 0

    def project(self, Q: torch.Tensor, W: torch.Tensor):
        return cu.project_with(self.lib, Q, W, self.index, self.stream())

    def update(self, Q: torch.Tensor, W: torch.Tensor, C: torch.Tensor, gram: bool):
        return cu.update_with(self.lib, Q, W, C, gram, self.index, self.stream())

    def transform(self, W: torch.Tensor, T: torch.Tensor, gram: bool):
        return cu.transform_with(self.lib, W, T, gram, self.index, self.stream())

    def block_reorth(self, Q: torch.Tensor, W: torch.Tensor, rank_tol: float):
        return cgs2_cholqr2(Q, W, rank_tol, self.project, self.update, self.transform)

    def plan(self, op: str, qdtype, wdtype, m: int, b: int, p: int, gram: bool = False):
        return cu.plan(op, qdtype, wdtype, m, b, p, gram, self.index, self.lib)


class Guards:
    """Buffers embedded between NaN-filled guard regions; check() verifies the guards."""

    PAD = 64  # elements on each side (keeps 16-byte alignment for every dtype)

    def __init__(self) -> None:
        self.regions: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _fill(self, t: torch.Tensor) -> None:
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        else:
            t.fill_(255)

    def place(self, src: torch.Tensor, misalign: int = 0) -> torch.Tensor:
        """A contiguous copy of src at PAD + misalign elements into a guarded buffer."""
        n = src.numel()
        buf = torch.empty(n + 2 * self.PAD + misalign, dtype=src.dtype, device=src.device)
        self._fill(buf)
        start = self.PAD + misalign
        inner = buf[start : start + n].view(src.shape)
        inner.copy_(src)
        self._remember(buf, start, n)
        return inner

    def empty(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = torch.empty(numel + 2 * self.PAD, dtype=dtype, device=device)
        self._fill(buf)
        self._remember(buf, self.PAD, numel)
        return buf[self.PAD : self.PAD + numel]

    def _remember(self, buf: torch.Tensor, start: int, n: int) -> None:
        mask = torch.ones(buf.numel(), dtype=torch.bool, device=buf.device)
        mask[start : start + n] = False
        self.regions.append((buf, mask))

    def check(self) -> None:
        for buf, mask in self.regions:
            guard = buf[mask]
            if guard.dtype.is_floating_point:
                assert torch.isnan(guard).all(), "a kernel wrote outside its buffer"
            else:
                assert (guard == 255).all(), "a kernel wrote outside its workspace"


@pytest.fixture
def guards(monkeypatch: pytest.MonkeyPatch) -> Guards:
    """Route the wrapper's output/workspace allocations through guarded buffers."""
    g = Guards()
    monkeypatch.setattr(cu, "_empty", g.empty)
    yield g
    g.check()


# ---------------------------------------------------------------------------------------
# Inputs and float64 oracles


def make_basis(m: int, p: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``m × p`` basis with orthonormal rows (in float64, then rounded to dtype)."""
    if m == 0:
        return torch.zeros((0, p), dtype=dtype, device=device)
    g = torch.randn(p, m, dtype=torch.float64, device=device)
    return torch.linalg.qr(g)[0].T.contiguous().to(dtype=dtype)


def bound(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """|A| @ |B|: the scale of each entry's rounding error in A @ B."""
    return A.abs() @ B.abs()


def assert_close_scaled(got, want, scale, rtol: float, what: str) -> None:
    got, want, scale = (x.double().cpu() for x in (got, want, scale))
    assert torch.isfinite(got).all(), f"{what}: non-finite values (out-of-bounds read?)"
    err = (got - want).abs()
    allowed = rtol * scale + 1e-300
    worst = (err / allowed).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"{what}: error {worst:.3g}x the allowed {rtol:g} * scale"


RTOL = {F64: 1e-13, F32: 2e-5}


def check_primitives(run: Runner, g: Guards, m: int, b: int, p: int, qdt, wdt, misalign=0):
    dev = run.device
    Q = g.place(make_basis(m, p, qdt, dev), misalign)
    W0 = torch.randn(b, p, dtype=wdt, device=dev)
    W = g.place(W0, misalign)
    Q64, W64 = Q.double(), W0.double()
    rt = RTOL[wdt]

    # project: C = Q W^T, n2 = |w_k|^2 (float64 products)
    C, n2 = run.project(Q, W)
    assert C.shape == (m, b) and n2.shape == (b,) and C.dtype == n2.dtype == F64
    assert_close_scaled(C, Q64 @ W64.T, bound(Q64, W64.T), rt, "project C")
    assert_close_scaled(n2, (W64**2).sum(1), (W64**2).sum(1), 1e-12, "project n2")
    assert torch.equal(W, W0), "project modified W"

    # update (gram=False): W -= C^T Q, then D = Q W^T
    Cin = C + 0.25 * torch.randn_like(C)  # not the exact projection: a general update
    Wu = g.place(W0, misalign)
    D = run.update(Q, Wu, Cin, False)
    W_ref = W64 - Cin.T @ Q64
    assert_close_scaled(Wu, W_ref, bound(Cin.T, Q64) + W64.abs(), rt, "update W")
    Wu64 = Wu.double()
    assert D.shape == (m, b)
    assert_close_scaled(D, Q64 @ Wu64.T, bound(Q64, Wu64.T), rt, "update D")

    # update (gram=True): W -= C^T Q, then G = W W^T (float64 products, exactly symmetric)
    Wg = g.place(W0, misalign)
    G = run.update(Q, Wg, Cin, True)
    assert_close_scaled(Wg, W_ref, bound(Cin.T, Q64) + W64.abs(), rt, "update(gram) W")
    Wg64 = Wg.double()
    assert G.shape == (b, b) and torch.equal(G, G.T)
    assert_close_scaled(G, Wg64 @ Wg64.T, bound(Wg64, Wg64.T), 1e-13, "update G")

    # transform: W <- T W (+ G)
    T = torch.randn(b, b, dtype=F64, device=dev)
    for gram in (False, True):
        Wt = g.place(W0, misalign)
        Gt = run.transform(Wt, g.place(T), gram)
        assert_close_scaled(Wt, T @ W64, bound(T, W64), rt, "transform W")
        if gram:
            Wt64 = Wt.double()
            assert Gt.shape == (b, b) and torch.equal(Gt, Gt.T)
            assert_close_scaled(Gt, Wt64 @ Wt64.T, bound(Wt64, Wt64.T), 1e-13, "transform G")
        else:
            assert Gt.numel() == 0
    g.check()


def degenerate_block(kind: str, Q: torch.Tensor, b: int, p: int, dtype, device) -> torch.Tensor:
    W = torch.randn(b, p, dtype=torch.float64)
    Q64 = Q.double().cpu()
    if kind == "in_span" and Q.shape[0] > 0:
        W[0] = torch.randn(Q.shape[0], dtype=torch.float64) @ Q64  # numerically in span(Q)
    if kind == "duplicate" and b >= 2:
        W[1] = 2.0 * W[0]
    if kind == "zero_row":
        W[b // 2] = 0.0
    return W.to(device=device, dtype=dtype)


def check_full_op(run: Runner, g: Guards, m, b, p, qdt, wdt, kind="random", misalign=0):
    dev = run.device
    Q = g.place(make_basis(m, p, qdt, dev), misalign)
    W0 = degenerate_block(kind, Q, b, p, wdt, dev)
    W = g.place(W0, misalign)
    tol = TOL[wdt]
    coeffs, R = run.block_reorth(Q, W, tol)
    W_ref = W0.clone()
    coeffs_ref, R_ref = reference_block_reorth(Q, W_ref, tol)
    assert coeffs.shape == (m, b) and R.shape == (b, b)
    assert torch.isfinite(W).all() and torch.isfinite(R).all() and torch.isfinite(coeffs).all()
    # same deficient vectors as the oracle
    assert torch.equal(R.diagonal() == 0, R_ref.diagonal() == 0), (
        R.diagonal().tolist(),
        R_ref.diagonal().tolist(),
    )
    kept = (R.diagonal() > 0).to(F64)
    W64 = W.double()
    eps = {F64: 1e-12, F32: 5e-6}[wdt]
    # orthonormal block, zero rows where deficient
    assert (W64 @ W64.T - torch.diag(kept)).abs().max().item() < 10 * eps
    assert (W64[kept == 0] == 0).all()
    # W_in = C^T Q + R^T W_out
    recon = coeffs.T @ Q.double() + R.T @ W64
    scale = W0.double().norm(dim=1, keepdim=True).clamp_min(1.0)
    assert ((recon - W0.double()).abs() / scale).max().item() < 10 * eps
    if qdt == wdt:  # an exactly orthonormal-to-rounding basis: check orthogonality to it
        if m:
            assert (Q.double() @ W64.T).abs().max().item() < 10 * eps
        assert_close_scaled(coeffs, coeffs_ref, coeffs_ref.abs() + 1, 1e3 * eps, "coeffs")
    else:  # a rounded basis is not orthonormal; agree with the oracle on the same input
        assert_close_scaled(coeffs, coeffs_ref, coeffs_ref.abs() + 1, 1e-4, "coeffs")
    assert_close_scaled(R, R_ref, R_ref.abs() + 1, 1e3 * eps if qdt == wdt else 1e-4, "R")
    g.check()


# ---------------------------------------------------------------------------------------
# Emulation tier

needs_emulation = pytest.mark.skipif(
    _cxx() is None or _cuda_include() is None,
    reason="needs a C++ compiler and the CUDA headers (cuda_runtime.h, cuda_bf16.h)",
)

EMU_H200 = dict(sms=132, smem_optin=232448, smem_per_sm=233472)


@functools.cache
def _emulation_library(out_dir: str) -> ctypes.CDLL:
    out = Path(out_dir) / "block_reorth_emu.so"
    return build_emulation(CUDA_DIR / "block_reorth.cu", out, EMULATION_HEADER, cu.load_library)


@pytest.fixture(scope="module")
def emu_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cuda_emulation"))


def emulated(
    emu_dir: str,
    order: int = 0,
    sms: int = 1,
    smem_optin: int | None = None,
    smem_per_sm: int | None = None,
) -> Runner:
    lib = _emulation_library(emu_dir)
    optin = EMU_H200["smem_optin"] if smem_optin is None else smem_optin
    per_sm = EMU_H200["smem_per_sm"] if smem_per_sm is None else smem_per_sm
    lib.lf_emu_configure(order, 1234, sms, optin, per_sm)
    cu._workspace_bytes.cache_clear()  # the emulated device's attributes just changed
    return Runner(lib, torch.device("cpu"), 0)


SHAPES = [  # (m, b, p): tails, exact tiles, vector/scalar paths, b > m, m = 0, b = 1
    (0, 1, 1),
    (0, 5, 70),
    (1, 1, 1),
    (3, 1, 64),
    (7, 3, 130),
    (5, 9, 136),
    (24, 16, 300),
]


@needs_emulation
@pytest.mark.parametrize("qdt,wdt", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("m,b,p", SHAPES)
def test_emulated_primitives(emu_dir, guards, m, b, p, qdt, wdt) -> None:
    check_primitives(emulated(emu_dir), guards, m, b, p, qdt, wdt)


@needs_emulation
@pytest.mark.parametrize("order", [1, 2], ids=["reverse", "shuffled"])
@pytest.mark.parametrize("qdt,wdt", [PAIRS[0], PAIRS[2]], ids=[PAIR_IDS[0], PAIR_IDS[2]])
@pytest.mark.parametrize("m,b,p", [(7, 3, 130), (24, 16, 300), (3, 64, 100)])
def test_emulated_primitives_thread_orders(emu_dir, guards, order, m, b, p, qdt, wdt) -> None:
    """Each barrier interval runs its threads backwards / shuffled: a missing barrier between
    a write and another thread's read gives a wrong result in one of the orders."""
    check_primitives(emulated(emu_dir, order=order), guards, m, b, p, qdt, wdt)


@needs_emulation
@pytest.mark.parametrize("qdt,wdt", PAIRS, ids=PAIR_IDS)
def test_emulated_misaligned_pointers(emu_dir, guards, qdt, wdt) -> None:
    """Storage offset of one element: no 16-byte loads, same results."""
    check_primitives(emulated(emu_dir), guards, 6, 5, 256, qdt, wdt, misalign=1)


# Shared-memory limits that force each fallback, with the plan they must produce.
FALLBACKS = [
    # (qdt, wdt, m, b, p, optin, per_sm, expected (mc, coef_in_smem, acc_in_smem))
    (F32, F32, 100, 16, 200, 49152, 102400, (64, 1, 0)),  # chunked basis, global acc
    (BF16, F32, 300, 16, 320, 49152, 102400, (64, 0, 0)),  # global coefficients too
    (F64, F64, 100, 16, 100, 65536, 131072, (64, 0, 0)),
    (F32, F32, 100, 64, 200, 65536, 131072, (64, 0, 0)),  # b = 64: no split reductions
    (F32, F32, 150, 8, 200, 232448, 233472, (150, 1, 1)),  # H200: everything in smem
]


@needs_emulation
@pytest.mark.parametrize("qdt,wdt,m,b,p,optin,per_sm,expected", FALLBACKS)
def test_emulated_shared_memory_fallbacks(
    emu_dir, guards, qdt, wdt, m, b, p, optin, per_sm, expected
) -> None:
    run = emulated(emu_dir, smem_optin=optin, smem_per_sm=per_sm)
    info = run.plan("update", qdt, wdt, m, b, p)
    assert (info["mc"], info["coef_in_smem"], info["acc_in_smem"]) == expected, info
    assert info["smem"] <= optin
    check_primitives(run, guards, m, b, p, qdt, wdt)
    check_full_op(run, guards, m, b, p, qdt, wdt)


@needs_emulation
def test_emulated_plan_is_consistent(emu_dir) -> None:
    run = emulated(emu_dir, sms=132)
    for op in ("project", "update", "transform"):
        for m, b, p in [(0, 1, 1), (128, 64, 10**6), (300, 64, 4096), (1000, 8, 10**7)]:
            for qdt, wdt in PAIRS:
                for gram in (False, True):
                    info = run.plan(op, qdt, wdt, m, b, p, gram)
                    assert info["smem"] <= EMU_H200["smem_optin"]
                    assert 1 <= info["nctas"] <= info["ntiles"]
                    assert info["workspace"] >= info["nctas"] * info["acc_size"] * 8
    # the common case keeps two CTAs per SM
    info = run.plan("update", F32, F32, 128, 16, 10**6)
    assert info["nctas"] == 2 * 132 and info["acc_in_smem"] and info["coef_in_smem"]
    with pytest.raises(RuntimeError, match="invalid argument"):
        run.plan("project", F32, F32, 4, 65, 100)  # b > 64 is refused by the kernels


@needs_emulation
@pytest.mark.parametrize("qdt,wdt", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(
    "m,b,p,kind",
    [
        (0, 4, 70, "random"),
        (0, 3, 50, "duplicate"),
        (5, 1, 40, "random"),
        (12, 5, 200, "in_span"),
        (12, 5, 200, "duplicate"),
        (12, 5, 200, "zero_row"),
        (6, 9, 130, "random"),  # b > m
    ],
)
def test_emulated_block_reorth(emu_dir, guards, m, b, p, kind, qdt, wdt) -> None:
    check_full_op(emulated(emu_dir), guards, m, b, p, qdt, wdt, kind)


@needs_emulation
@pytest.mark.parametrize("qdt,wdt", [PAIRS[0], PAIRS[1]], ids=PAIR_IDS[:2])
def test_emulated_exhausted_space(emu_dir, guards, qdt, wdt) -> None:
    """m + b > p: only p - m vectors survive; a float32 Gram matrix would keep spurious
    ones (the Gram products are float64 for exactly this case)."""
    check_full_op(emulated(emu_dir, sms=4), guards, 60, 40, 80, qdt, wdt)


@needs_emulation
def test_emulated_results_are_bitwise_reproducible(emu_dir) -> None:
    outs = []
    for order in (0, 1, 2):
        run = emulated(emu_dir, order=order, sms=3)
        torch.manual_seed(5)
        Q = make_basis(20, 700, F32, "cpu")
        W = torch.randn(7, 700)
        outs.append((*run.project(Q, W), run.update(Q, W, torch.randn(20, 7, dtype=F64), True)))
    for other in outs[1:]:
        for x, y in zip(outs[0], other):
            assert torch.equal(x, y)


@needs_emulation
def test_wrapper_rejects_bad_inputs(emu_dir) -> None:
    run = emulated(emu_dir)
    Q, W = make_basis(3, 10, F32, "cpu"), torch.randn(2, 10)
    with pytest.raises(TypeError, match="unsupported dtypes"):
        run.project(Q.double(), W)
    with pytest.raises(ValueError, match="contiguous"):
        run.project(Q, torch.randn(10, 2).T)
    with pytest.raises(ValueError, match="shape"):
        run.update(Q, W, torch.zeros(2, 3, dtype=F64), False)
    with pytest.raises(ValueError, match="CUDA tensors"):
        cu.project(Q, W)


# ---------------------------------------------------------------------------------------
# GPU tier


@pytest.fixture(scope="module")
def gpu_runner(cuda_build: dict) -> Runner:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert cuda_build["link"] is not None and cuda_build["link"].returncode == 0
    lib = cu.load_library(cuda_build["lib"])
    device = torch.device("cuda", torch.cuda.current_device())
    return Runner(lib, device, device.index)


@pytest.mark.gpu
@pytest.mark.parametrize("qdt,wdt", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("m,b,p", [*SHAPES, (128, 64, 100_003), (300, 16, 65_536)])
def test_gpu_primitives(gpu_runner, guards, m, b, p, qdt, wdt) -> None:
    torch.manual_seed(m * 1000 + b)
    check_primitives(gpu_runner, guards, m, b, p, qdt, wdt)
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("qdt,wdt", PAIRS, ids=PAIR_IDS)
def test_gpu_misaligned_pointers(gpu_runner, guards, qdt, wdt) -> None:
    check_primitives(gpu_runner, guards, 6, 5, 4096, qdt, wdt, misalign=1)


@pytest.mark.gpu
@pytest.mark.parametrize("qdt,wdt", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(
    "m,b,p,kind",
    [
        (0, 4, 70, "random"),
        (5, 1, 40, "random"),
        (12, 5, 200, "in_span"),
        (12, 5, 200, "duplicate"),
        (12, 5, 200, "zero_row"),
        (6, 9, 130, "random"),
        (60, 40, 80, "random"),
        (200, 64, 300_001, "random"),
        (128, 16, 1_000_000, "duplicate"),
    ],
)
def test_gpu_block_reorth(gpu_runner, guards, m, b, p, kind, qdt, wdt) -> None:
    check_full_op(gpu_runner, guards, m, b, p, qdt, wdt, kind)


@pytest.mark.gpu
def test_gpu_bitwise_reproducible(gpu_runner) -> None:
    Q = make_basis(96, 2_000_003, F32, "cuda").to(BF16)
    W = torch.randn(16, 2_000_003, device="cuda")
    C = torch.randn(96, 16, dtype=F64, device="cuda")
    first = [gpu_runner.project(Q, W), gpu_runner.update(Q, W.clone(), C, False)]
    for _ in range(3):
        again = [gpu_runner.project(Q, W), gpu_runner.update(Q, W.clone(), C, False)]
        assert all(torch.equal(x, y) for x, y in zip(first[0], again[0]))
        assert torch.equal(first[1], again[1])


@pytest.mark.gpu
def test_gpu_on_a_side_stream(gpu_runner) -> None:
    Q, W = make_basis(32, 100_000, F32, "cuda"), torch.randn(8, 100_000, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        C, n2 = gpu_runner.project(Q, W)
    s.synchronize()
    assert torch.allclose(C, Q.double() @ W.double().T, atol=1e-4)


@pytest.mark.gpu
def test_gpu_public_op(gpu_runner) -> None:
    from landscape_fast import _backend
    from landscape_fast.ops import block_reorth

    if _backend.BACKENDS["cuda"].unavailable_reason() is not None:
        pytest.skip(f"cuda backend not installed: {_backend.BACKENDS['cuda'].unavailable_reason()}")
    Q = make_basis(64, 50_000, F32, "cuda")
    W = torch.randn(8, 50_000, device="cuda")
    out = block_reorth(Q, W, backend="cuda")
    assert (Q @ out.W.T).abs().max().item() < 1e-5
    wide = block_reorth(Q, torch.randn(80, 50_000, device="cuda"), backend="cuda")  # b > 64
    assert wide.R.shape == (80, 80)


# ---------------------------------------------------------------------------------------
# Benchmark (GPU): python tests/kernels/test_cuda_block_reorth.py [--lib PATH]


def _benchmark(lib_path: str | None) -> None:  # pragma: no cover - needs a GPU
    import tempfile
    import time

    if lib_path is None:
        from landscape_fast import _backend

        lib_path = str(_backend._cuda_library_path() or "")
    if not lib_path:
        out = Path(tempfile.mkdtemp())
        arch = _gpu_arch() or "90"
        lib_path = str(out / "_cuda_kernels.so")
        cmd = [find_nvcc(), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-cudart",
               "static", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-o", lib_path,
               *map(str, SOURCES)]  # fmt: skip
        subprocess.run(cmd, check=True)
    lib = cu.load_library(lib_path)
    dev = torch.device("cuda", torch.cuda.current_device())
    run = Runner(lib, dev, dev.index)
    print(f"{torch.cuda.get_device_name(dev)}; library {lib_path}")

    def timed(fn: Callable[[], object], reps: int = 5) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    shapes = [(128, 1, 1 << 25), (128, 8, 1 << 24), (128, 16, 1 << 24), (256, 64, 1 << 22)]
    for m, b, p in shapes:
        for qdt, wdt in PAIRS:
            Q = torch.randn(m, p, device=dev, dtype=wdt).to(qdt)
            W = torch.randn(b, p, device=dev, dtype=wdt)
            Z = torch.zeros(m, b, device=dev, dtype=F64)  # W stays unchanged across repeats
            T = torch.eye(b, device=dev, dtype=F64)
            qb, wb = Q.numel() * Q.element_size(), W.numel() * W.element_size()
            calls = [
                ("project", functools.partial(run.project, Q, W), qb + wb),
                ("update D", functools.partial(run.update, Q, W, Z, False), qb + 2 * wb),
                ("update G", functools.partial(run.update, Q, W, Z, True), qb + 2 * wb),
                ("transform G", functools.partial(run.transform, W, T, True), 2 * wb),
            ]
            cells = []
            for name, fn, nbytes in calls:
                t = timed(fn)
                cells.append(f"{name} {t * 1e3:7.3f} ms {nbytes / t / 1e12:5.2f} TB/s")
            info = run.plan("update", qdt, wdt, m, b, p)
            dtypes = f"{str(qdt)[6:]}/{str(wdt)[6:]}"
            print(f"m={m:4d} b={b:3d} p={p:9d} {dtypes:>16}  " + "  ".join(cells) + f"  {info}")


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description="time the CUDA block_reorth primitives")
    parser.add_argument("--lib", default=None, help="kernel library (default: installed/built)")
    _benchmark(parser.parse_args().lib)
