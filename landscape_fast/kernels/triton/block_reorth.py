r"""``block_reorth`` on the GPU: Triton kernels for the driver's three streaming primitives.

The pass structure and the float64 CholeskyQR2 bookkeeping live in
:mod:`landscape_fast.kernels.block_reorth_driver`; this module provides

``project(Q, W) -> (C, n2)``, ``update_(Q, W, C, gram) -> D``, ``transform_(W, T, gram) -> G``

with exactly the semantics documented there, and :func:`block_reorth_` plugs them in.

Kernel design
-------------
* **Grid.** A 1-D grid of ``G = min(cdiv(p, BLOCK_P), max_programs)`` programs; program
  ``g`` owns the column tiles ``g, g + G, g + 2G, ...`` of width ``BLOCK_P`` (grid-stride).
  Every program writes its own partial sums to a ``(G, m, b)`` / ``(G, b, b)`` / ``(G, b)``
  buffer, summed afterwards with ``torch.sum(dtype=float64)``: deterministic, no atomics,
  and the partial buffers stay small (``G`` is capped at ``2 × #SMs`` on a GPU) however
  long the vectors are.
* **Rows of Q.** The basis rows are processed in blocks of ``BLOCK_M``. When the whole
  basis fits one block (by default ``m <= 128``, see :class:`TileConfig`) the ``m × b``
  accumulator lives in registers for the program's whole sweep ("single-m" path).
  Otherwise ``project`` loops over row blocks outside its tile loop (a split-K GEMM; the
  small ``W`` tiles are re-read per row block, ``Q`` is read once), and ``update_``
  accumulates ``D`` into its private slice of the partial buffer (load-add-store,
  separated by a barrier per tile).
* **One read of Q per primitive.** ``update_`` loads each ``Q`` tile, applies
  ``W -= Cᵀ Q_tile`` (accumulating in registers), stores the ``W`` tile, then reuses the
  *same* ``Q`` tile for ``D = Q W_tileᵀ`` (single-m path: the tile is still in registers;
  multi-block path: it is re-loaded right after its first use, from L1/L2).
* **Precision.** Tiles of a bfloat16/float16 basis are converted to float32 right after
  the load and every product accumulates in float32 (float64 for a float64 block); the
  float32 dots use ``input_precision="ieee"`` (never TF32). Squared norms and Gram
  matrices are accumulated in float64 from the float32 values as stored (float32 products
  are exact in float64), since the Cholesky rank decisions need ~1e-8 relative resolution.
* **Shapes.** Every tile dimension is a power of two and at least ``min_block = 16``
  (``tl.dot`` needs ``>= 16`` on GPUs); ragged edges (``b < BLOCK_B``, ``m`` not a multiple of
  ``BLOCK_M``, ``p`` not a multiple of ``BLOCK_P``, tiny ``p``) are masked loads (zero
  fill) and masked stores. 64-bit offsets allow ``m·p`` and ``b·p`` beyond ``2^31``.

Tile sizes come from :class:`TileConfig`; the defaults target an H100/H200 with ``b`` up to
64 and ``m`` up to a few hundred, and tests pass small configs to exercise every path.

Example (needs a CUDA device, or CPU tensors under ``TRITON_INTERPRET=1``, hence skipped
as a doctest):
    >>> import torch
    >>> from landscape_fast.kernels.triton.block_reorth import project
    >>> Q = torch.eye(2, 5)
    >>> W = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0]])
    >>> C, n2 = project(Q, W)  # doctest: +SKIP
    >>> C.flatten().tolist(), n2.tolist()  # doctest: +SKIP
    ([1.0, 2.0], [14.0])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from landscape_fast.kernels.block_reorth_driver import cgs2_cholqr2
from landscape_fast.ops.block_reorth import BASIS_DTYPES


@dataclass(frozen=True)
class TileConfig:
    """Tile-size policy of the ``block_reorth`` kernels (all sizes powers of two).

    Attributes:
        block_p: Largest column-tile width ``BLOCK_P``; it is further limited so that a
            ``BLOCK_B × BLOCK_P`` or ``BLOCK_M × BLOCK_P`` tile has at most ``tile_elems``
            elements, and never exceeds ``next_pow2(p)``.
        block_m: Row-block height ``BLOCK_M`` when the basis does not fit one block.
        single_m_elems: The basis is handled as one row block (register-resident ``m × b``
            accumulator) when ``next_pow2(m) * BLOCK_B`` is at most this and a
            ``next_pow2(m) × min_block_p`` tile fits ``tile_elems``.
        min_block_p: Narrowest column tile the single-block path may force (rows of a tile
            are contiguous segments of ``BLOCK_P`` elements: keep them >= 128 bytes).
        tile_elems: Element budget of one streamed tile (register pressure).
        max_programs: Grid cap; ``None``: ``2 × #SMs`` on a GPU, 8 in the interpreter.
        num_warps: Warps per program; ``None``: 4, or 8 for large tiles.
        min_block: Smallest tile dimension (``tl.dot`` needs 16 on GPUs).
        input_precision: ``tl.dot`` input precision of the float32 products (``"ieee"``;
            ``"tf32x3"`` is a faster near-float32 option worth benchmarking, ``"tf32"`` is
            too inaccurate for reorthogonalization). float64 dots always use ``"ieee"``.
    """

    block_p: int = 256
    block_m: int = 64
    single_m_elems: int = 8192
    min_block_p: int = 64
    tile_elems: int = 8192
    max_programs: int | None = None
    num_warps: int | None = None
    min_block: int = 16
    input_precision: str = "ieee"

    def __post_init__(self) -> None:
        powers = ("block_p", "block_m", "single_m_elems", "min_block_p", "tile_elems", "min_block")
        for name in powers:
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"TileConfig.{name} must be a power of two, got {value}")
        if self.max_programs is not None and self.max_programs < 1:
            raise ValueError(f"TileConfig.max_programs must be >= 1, got {self.max_programs}")


DEFAULT_CONFIG = TileConfig()


@dataclass(frozen=True)
class _Plan:
    """Launch parameters for one ``(m, b, p)`` problem."""

    block_b: int
    block_m: int
    block_p: int
    num_mb: int  # row blocks of Q (>= 1, even when m == 0)
    single_m: bool
    num_tiles: int
    grid: int
    num_warps: int


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _default_max_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * _sm_count(device.index if device.index is not None else 0)
    return 8


def _plan(m: int, b: int, p: int, device: torch.device, cfg: TileConfig) -> _Plan:
    lo = cfg.min_block
    block_b = max(lo, triton.next_power_of_2(b))
    m_pad = max(lo, triton.next_power_of_2(max(m, 1)))
    single_m = m_pad <= cfg.block_m or (
        m_pad * block_b <= cfg.single_m_elems and m_pad * cfg.min_block_p <= cfg.tile_elems
    )
    block_m = m_pad if single_m else max(lo, cfg.block_m)
    block_p = min(
        cfg.block_p,
        _pow2_at_most(cfg.tile_elems // block_b),
        _pow2_at_most(cfg.tile_elems // block_m),
        triton.next_power_of_2(p),
    )
    block_p = max(lo, block_p)
    num_tiles = triton.cdiv(p, block_p)
    max_programs = cfg.max_programs or _default_max_programs(device)
    big = max(block_b, block_m) * block_p >= 8192 or block_m * block_b >= 8192
    return _Plan(
        block_b=block_b,
        block_m=block_m,
        block_p=block_p,
        num_mb=max(1, triton.cdiv(m, block_m)),
        single_m=single_m,
        num_tiles=num_tiles,
        grid=min(num_tiles, max_programs),
        num_warps=cfg.num_warps or (8 if big else 4),
    )


# --------------------------------------------------------------------------------------
# Kernels. Rows are vectors: Q is (m, p), W is (b, p), both contiguous (row stride p).
# ACC is the arithmetic dtype (float32 for a float32 block, float64 for float64).
# --------------------------------------------------------------------------------------


@triton.jit
def _project_kernel(
    q_ptr,
    w_ptr,
    c_part_ptr,  # (G, m, b) ACC: per-program partials of C = Q W^T
    n2_part_ptr,  # (G, b) float64: per-program partials of ||w_k||^2
    m,
    b,
    p,
    num_mb,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_P: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_m = tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    mask_b = offs_b < b
    w_rows = offs_b.to(tl.int64) * p
    n2 = tl.zeros([BLOCK_B], dtype=tl.float64)
    # Split-K GEMM: the row blocks of Q outside, the program's column tiles inside, so the
    # (BLOCK_M, BLOCK_B) accumulator stays in registers; with num_mb == 1 (the common case)
    # W and Q are both read exactly once.
    for mb in range(0, num_mb):
        rows = mb * BLOCK_M + offs_m
        mask_m = rows < m
        q_rows = rows.to(tl.int64) * p
        acc = tl.zeros([BLOCK_M, BLOCK_B], dtype=ACC)
        for start in range(pid * BLOCK_P, p, nprog * BLOCK_P):
            cols = start + offs_p
            mask_p = cols < p
            w = tl.load(
                w_ptr + (w_rows[:, None] + cols[None, :]),
                mask=mask_b[:, None] & mask_p[None, :],
                other=0.0,
            ).to(ACC)
            q = tl.load(
                q_ptr + (q_rows[:, None] + cols[None, :]),
                mask=mask_m[:, None] & mask_p[None, :],
                other=0.0,
            ).to(ACC)  # bf16/fp16 basis: convert before any arithmetic
            acc = tl.dot(q, tl.trans(w), acc, input_precision=INPUT_PRECISION)
            if mb == 0:
                w64 = w.to(tl.float64)
                n2 += tl.sum(w64 * w64, axis=1)
        c_offs = (pid * m + rows).to(tl.int64)[:, None] * b + offs_b[None, :]
        tl.store(c_part_ptr + c_offs, acc, mask=mask_m[:, None] & mask_b[None, :])
    tl.store(n2_part_ptr + pid * b + offs_b, n2, mask=mask_b)


@triton.jit
def _update_kernel(
    q_ptr,
    w_ptr,
    c_ptr,  # (m, b) ACC: coefficients to subtract, W -= C^T Q
    d_part_ptr,  # (G, m, b) ACC: partials of D = Q W^T (not GRAM); zero-filled
    g_part_ptr,  # (G, b, b) float64: partials of W W^T (GRAM)
    m,
    b,
    p,
    num_mb,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_P: tl.constexpr,
    SINGLE_M: tl.constexpr,
    GRAM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_m = tl.arange(0, BLOCK_M)
    offs_p = tl.arange(0, BLOCK_P)
    mask_b = offs_b < b
    w_rows = offs_b.to(tl.int64) * p
    g = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float64)
    if SINGLE_M:
        # The whole basis is one row block: -C^T and the D accumulator stay in registers,
        # each Q tile is loaded once and used for both the update and the projection.
        mask_m = offs_m < m
        q_rows = offs_m.to(tl.int64) * p
        c = tl.load(
            c_ptr + (offs_m[:, None] * b + offs_b[None, :]),
            mask=mask_m[:, None] & mask_b[None, :],
            other=0.0,
        )
        neg_ct = -tl.trans(c)  # (BLOCK_B, BLOCK_M)
        d = tl.zeros([BLOCK_M, BLOCK_B], dtype=ACC)
        for start in range(pid * BLOCK_P, p, nprog * BLOCK_P):
            cols = start + offs_p
            mask_p = cols < p
            mask_w = mask_b[:, None] & mask_p[None, :]
            w_offs = w_rows[:, None] + cols[None, :]
            w = tl.load(w_ptr + w_offs, mask=mask_w, other=0.0).to(ACC)
            q = tl.load(
                q_ptr + (q_rows[:, None] + cols[None, :]),
                mask=mask_m[:, None] & mask_p[None, :],
                other=0.0,
            ).to(ACC)
            w = tl.dot(neg_ct, q, w, input_precision=INPUT_PRECISION)  # W - C^T Q
            tl.store(w_ptr + w_offs, w.to(w_ptr.dtype.element_ty), mask=mask_w)
            if GRAM:
                w64 = w.to(tl.float64)
                g = tl.dot(w64, tl.trans(w64), g, input_precision="ieee")
            else:
                d = tl.dot(q, tl.trans(w), d, input_precision=INPUT_PRECISION)
        if not GRAM:
            d_offs = (pid * m + offs_m).to(tl.int64)[:, None] * b + offs_b[None, :]
            tl.store(d_part_ptr + d_offs, d, mask=mask_m[:, None] & mask_b[None, :])
    else:
        for start in range(pid * BLOCK_P, p, nprog * BLOCK_P):
            cols = start + offs_p
            mask_p = cols < p
            mask_w = mask_b[:, None] & mask_p[None, :]
            w_offs = w_rows[:, None] + cols[None, :]
            w = tl.load(w_ptr + w_offs, mask=mask_w, other=0.0).to(ACC)
            for mb in range(0, num_mb):
                rows = mb * BLOCK_M + offs_m
                mask_m = rows < m
                q = tl.load(
                    q_ptr + (rows.to(tl.int64)[:, None] * p + cols[None, :]),
                    mask=mask_m[:, None] & mask_p[None, :],
                    other=0.0,
                ).to(ACC)
                c = tl.load(
                    c_ptr + (rows[:, None] * b + offs_b[None, :]),
                    mask=mask_m[:, None] & mask_b[None, :],
                    other=0.0,
                )
                w = tl.dot(-tl.trans(c), q, w, input_precision=INPUT_PRECISION)
            tl.store(w_ptr + w_offs, w.to(w_ptr.dtype.element_ty), mask=mask_w)
            if GRAM:
                w64 = w.to(tl.float64)
                g = tl.dot(w64, tl.trans(w64), g, input_precision="ieee")
            else:
                # Same Q tile again (just read by this program: an L1/L2 hit, not DRAM).
                for mb in range(0, num_mb):
                    rows = mb * BLOCK_M + offs_m
                    mask_m = rows < m
                    q = tl.load(
                        q_ptr + (rows.to(tl.int64)[:, None] * p + cols[None, :]),
                        mask=mask_m[:, None] & mask_p[None, :],
                        other=0.0,
                    ).to(ACC)
                    part = tl.dot(q, tl.trans(w), input_precision=INPUT_PRECISION)
                    d_ptrs = (
                        d_part_ptr + (pid * m + rows).to(tl.int64)[:, None] * b + offs_b[None, :]
                    )
                    mask_d = mask_m[:, None] & mask_b[None, :]
                    tl.store(d_ptrs, tl.load(d_ptrs, mask=mask_d, other=0.0) + part, mask=mask_d)
                # The next tile re-reads this program's slice: order the stores of all
                # threads before those loads (threads may hold different elements).
                tl.debug_barrier()
    if GRAM:
        g_offs = pid * b * b + offs_b[:, None] * b + offs_b[None, :]
        tl.store(g_part_ptr + g_offs, g, mask=mask_b[:, None] & mask_b[None, :])


@triton.jit
def _transform_kernel(
    w_ptr,
    t_ptr,  # (b, b) ACC: W <- T W
    g_part_ptr,  # (G, b, b) float64: partials of W W^T (GRAM)
    b,
    p,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_P: tl.constexpr,
    GRAM: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs_b = tl.arange(0, BLOCK_B)
    offs_p = tl.arange(0, BLOCK_P)
    mask_b = offs_b < b
    mask_bb = mask_b[:, None] & mask_b[None, :]
    w_rows = offs_b.to(tl.int64) * p
    tmat = tl.load(t_ptr + (offs_b[:, None] * b + offs_b[None, :]), mask=mask_bb, other=0.0)
    g = tl.zeros([BLOCK_B, BLOCK_B], dtype=tl.float64)
    for start in range(pid * BLOCK_P, p, nprog * BLOCK_P):
        cols = start + offs_p
        mask_w = mask_b[:, None] & (cols < p)[None, :]
        w_offs = w_rows[:, None] + cols[None, :]
        w = tl.load(w_ptr + w_offs, mask=mask_w, other=0.0).to(ACC)
        w = tl.dot(tmat, w, input_precision=INPUT_PRECISION)
        tl.store(w_ptr + w_offs, w.to(w_ptr.dtype.element_ty), mask=mask_w)
        if GRAM:
            w64 = w.to(tl.float64)
            g = tl.dot(w64, tl.trans(w64), g, input_precision="ieee")
    if GRAM:
        g_offs = pid * b * b + offs_b[:, None] * b + offs_b[None, :]
        tl.store(g_part_ptr + g_offs, g, mask=mask_bb)


# --------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------


def _check(Q: torch.Tensor | None, W: torch.Tensor) -> None:
    if W.dim() != 2 or not W.is_contiguous() or W.dtype not in BASIS_DTYPES:
        raise ValueError(
            f"triton block_reorth: W must be a contiguous 2-D float32/float64 tensor, got "
            f"{W.dtype} of shape {tuple(W.shape)}, strides {W.stride()}"
        )
    if W.shape[1] == 0:
        raise ValueError("triton block_reorth: vectors of length p = 0")
    if Q is None:
        return
    if Q.dim() != 2 or not Q.is_contiguous() or Q.shape[1] != W.shape[1]:
        raise ValueError(
            f"triton block_reorth: Q must be a contiguous (m, {W.shape[1]}) tensor, got shape "
            f"{tuple(Q.shape)}, strides {Q.stride()}"
        )
    if Q.dtype not in BASIS_DTYPES[W.dtype]:
        raise TypeError(f"triton block_reorth: a {W.dtype} block cannot use a {Q.dtype} basis")
    if Q.device != W.device:
        raise ValueError(f"triton block_reorth: Q is on {Q.device} but W is on {W.device}")


def _acc(W: torch.Tensor) -> tl.dtype:
    return tl.float64 if W.dtype == torch.float64 else tl.float32


def _precision(W: torch.Tensor, cfg: TileConfig) -> str:
    return "ieee" if W.dtype == torch.float64 else cfg.input_precision


def project(
    Q: torch.Tensor, W: torch.Tensor, config: TileConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``C = Q Wᵀ`` (``m × b``) and ``n2 = ‖w_k‖²`` (``b``), both float64; one pass."""
    _check(Q, W)
    cfg = config or DEFAULT_CONFIG
    (m, p), b = Q.shape, W.shape[0]
    plan = _plan(m, b, p, W.device, cfg)
    c_part = torch.empty((plan.grid, max(m, 1), b), dtype=W.dtype, device=W.device)
    n2_part = torch.empty((plan.grid, b), dtype=torch.float64, device=W.device)
    _project_kernel[(plan.grid,)](
        Q if m > 0 else W,  # never dereferenced when m == 0 (all rows masked)
        W,
        c_part,
        n2_part,
        m,
        b,
        p,
        plan.num_mb,
        ACC=_acc(W),
        BLOCK_M=plan.block_m,
        BLOCK_B=plan.block_b,
        BLOCK_P=plan.block_p,
        INPUT_PRECISION=_precision(W, cfg),
        num_warps=plan.num_warps,
    )
    return c_part[:, :m].sum(0, dtype=torch.float64), n2_part.sum(0)


def update_(
    Q: torch.Tensor,
    W: torch.Tensor,
    C: torch.Tensor,
    gram: bool,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """``W -= Cᵀ Q`` in place, then ``D = Q Wᵀ`` (``m × b``) or, if ``gram``, ``W Wᵀ``.

    One pass over ``Q``: each tile is used for the update and then for ``D``. Returns a
    float64 tensor.
    """
    _check(Q, W)
    cfg = config or DEFAULT_CONFIG
    (m, p), b = Q.shape, W.shape[0]
    if C.shape != (m, b):
        raise ValueError(f"triton block_reorth: C must be ({m}, {b}), got {tuple(C.shape)}")
    plan = _plan(m, b, p, W.device, cfg)
    c = C.to(device=W.device, dtype=W.dtype).contiguous() if m > 0 else W
    if gram:
        out_part = torch.empty((plan.grid, b, b), dtype=torch.float64, device=W.device)
        d_part = out_part  # unused
    else:
        d_part = torch.zeros((plan.grid, max(m, 1), b), dtype=W.dtype, device=W.device)
        out_part = d_part
    _update_kernel[(plan.grid,)](
        Q if m > 0 else W,
        W,
        c,
        d_part,
        out_part,
        m,
        b,
        p,
        plan.num_mb,
        ACC=_acc(W),
        BLOCK_M=plan.block_m,
        BLOCK_B=plan.block_b,
        BLOCK_P=plan.block_p,
        SINGLE_M=plan.single_m,
        GRAM=bool(gram),
        INPUT_PRECISION=_precision(W, cfg),
        num_warps=plan.num_warps,
    )
    if gram:
        return out_part.sum(0)
    return d_part[:, :m].sum(0, dtype=torch.float64)


def transform_(
    W: torch.Tensor, T: torch.Tensor, gram: bool, config: TileConfig | None = None
) -> torch.Tensor:
    """``W ← T W`` in place (``T`` is ``b × b``); returns float64 ``W Wᵀ`` if ``gram``.

    Without ``gram`` the returned tensor is an empty ``(0, 0)`` float64 placeholder.
    """
    _check(None, W)
    cfg = config or DEFAULT_CONFIG
    b, p = W.shape
    if T.shape != (b, b):
        raise ValueError(f"triton block_reorth: T must be ({b}, {b}), got {tuple(T.shape)}")
    plan = _plan(0, b, p, W.device, cfg)
    t = T.to(device=W.device, dtype=W.dtype).contiguous()
    g_part = torch.empty((plan.grid if gram else 1, b, b), dtype=torch.float64, device=W.device)
    _transform_kernel[(plan.grid,)](
        W,
        t,
        g_part,
        b,
        p,
        ACC=_acc(W),
        BLOCK_B=plan.block_b,
        BLOCK_P=plan.block_p,
        GRAM=bool(gram),
        INPUT_PRECISION=_precision(W, cfg),
        num_warps=plan.num_warps,
    )
    if gram:
        return g_part.sum(0)
    return torch.zeros((0, 0), dtype=torch.float64, device=W.device)


def block_reorth_(
    Q: torch.Tensor, W: torch.Tensor, rank_tol: float, *, config: TileConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place ``block_reorth`` with the Triton kernels; returns float64 ``(coeffs, R)``."""
    _check(Q, W)
    if config is None:
        return cgs2_cholqr2(Q, W, rank_tol, project, update_, transform_)
    return cgs2_cholqr2(
        Q,
        W,
        rank_tol,
        functools.partial(project, config=config),
        functools.partial(update_, config=config),
        functools.partial(transform_, config=config),
    )
