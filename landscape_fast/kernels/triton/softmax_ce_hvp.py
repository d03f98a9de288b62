r"""``softmax_ce_hvp`` on the GPU: one Triton program per sample row, all tangents.

Program ``n`` computes

.. math::

    \mathrm{out}[j, n, :] = w_n\, p_n \odot (U[j, n, :] - p_n^\top U[j, n, :]),
    \qquad p_n = \mathrm{softmax}(z_n),

for every tangent ``j``, streaming the row in ``BLOCK_C``-wide chunks:

1. **Softmax statistics** (one pass over the logits): an online maximum and normalizer
   per lane of the chunk (``s ← s·e^{m−m'} + e^{x−m'}``), combined across lanes at the
   end. Masked classes (``−∞``) contribute 0; a row of ``−∞`` gets ``p = 0``.
2. **Per block of ``BLOCK_K`` tangents**: one pass accumulating the dots
   :math:`s_j = \sum_c p_c u_{jc}` (``p`` recomputed from the logits chunk, which is
   re-read from L2), then one pass writing :math:`w\,p \odot (u_j - s_j)`.

No ``(N, C, C)`` or ``(k, N, C)`` temporary exists; the only memory is the output. A row
with weight 0 is written as zeros without reading its logits or tangents.

Precision: loads of bfloat16/float16 logits or tangents are converted to float32 right
after the load (the interpreter cannot do bfloat16 arithmetic); arithmetic is float32, or
float64 for float64 tangents; results are rounded to the tangents' dtype as stored.

Example (needs a CUDA device, or CPU tensors under ``TRITON_INTERPRET=1``, hence skipped
as a doctest):
    >>> import torch
    >>> from landscape_fast.kernels.triton.softmax_ce_hvp import softmax_ce_hvp_
    >>> z = torch.zeros(1, 2)
    >>> U = torch.tensor([[[1.0, 0.0]]])
    >>> out = torch.empty_like(U)
    >>> softmax_ce_hvp_(z, U, None, out)  # doctest: +SKIP
    >>> out.flatten().tolist()  # doctest: +SKIP
    [0.25, -0.25]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from landscape_fast.ops.softmax_ce_hvp import LOGIT_DTYPES


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of the ``softmax_ce_hvp`` kernel (powers of two).

    Attributes:
        block_c: Widest class chunk ``BLOCK_C`` (never more than ``next_pow2(C)``).
        block_k: Most tangents per block ``BLOCK_K`` (never more than ``next_pow2(k)``).
        tile_elems: Element budget of one ``BLOCK_K × BLOCK_C`` tangent tile; ``BLOCK_C``
            shrinks to respect it.
        num_warps: Warps per program; ``None``: 4, or 8 for tiles of 4096 elements or more.
    """

    block_c: int = 1024
    block_k: int = 8
    tile_elems: int = 8192
    num_warps: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_c", "block_k", "tile_elems"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"TileConfig.{name} must be a power of two, got {value}")


DEFAULT_CONFIG = TileConfig()


@triton.jit
def _softmax_ce_hvp_kernel(
    z_ptr,  # (N, C) logits
    u_ptr,  # (k, N, C) tangents
    w_ptr,  # (N,) ACC weights (unused unless HAS_W)
    out_ptr,  # (k, N, C), may be u_ptr
    N,
    C,
    k,
    HAS_W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    offs_kb = tl.arange(0, BLOCK_K)
    z_row = z_ptr + n * C
    if HAS_W:
        w = tl.load(w_ptr + n).to(ACC)
    else:
        w = tl.full([], 1.0, ACC)
    if w == 0:
        # Ignored sample: zeros, without reading its logits or tangents.
        for j0 in range(0, k, BLOCK_K):
            offs_k = j0 + offs_kb
            rows = (offs_k.to(tl.int64) * N + n) * C
            for start in range(0, C, BLOCK_C):
                cols = start + offs_c
                mask = (offs_k < k)[:, None] & (cols < C)[None, :]
                zero = tl.zeros([BLOCK_K, BLOCK_C], dtype=ACC)
                tl.store(
                    out_ptr + (rows[:, None] + cols[None, :]),
                    zero.to(out_ptr.dtype.element_ty),
                    mask=mask,
                )
    else:
        # 1. Online max / normalizer per lane, then across lanes.
        m_lane = tl.full([BLOCK_C], float("-inf"), ACC)
        s_lane = tl.zeros([BLOCK_C], dtype=ACC)
        for start in range(0, C, BLOCK_C):
            cols = start + offs_c
            x = tl.load(z_row + cols, mask=cols < C, other=float("-inf")).to(ACC)
            m_new = tl.maximum(m_lane, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new).to(ACC)
            s_lane = s_lane * tl.exp(m_lane - m_safe) + tl.exp(x - m_safe)
            m_lane = m_new
        mu = tl.max(m_lane, axis=0)
        mu = tl.where(mu == float("-inf"), 0.0, mu).to(ACC)
        total = tl.sum(s_lane * tl.exp(m_lane - mu), axis=0)
        inv = tl.where(total == 0, 0.0, 1.0 / tl.where(total == 0, 1.0, total)).to(ACC)
        # 2. Blocks of tangents: dots, then the output.
        for j0 in range(0, k, BLOCK_K):
            offs_k = j0 + offs_kb
            mask_k = offs_k < k
            rows = (offs_k.to(tl.int64) * N + n) * C
            s = tl.zeros([BLOCK_K], dtype=ACC)
            for start in range(0, C, BLOCK_C):
                cols = start + offs_c
                mask_c = cols < C
                x = tl.load(z_row + cols, mask=mask_c, other=float("-inf")).to(ACC)
                p = tl.exp(x - mu) * inv
                u = tl.load(
                    u_ptr + (rows[:, None] + cols[None, :]),
                    mask=mask_k[:, None] & mask_c[None, :],
                    other=0.0,
                ).to(ACC)
                s += tl.sum(u * p[None, :], axis=1)
            for start in range(0, C, BLOCK_C):
                cols = start + offs_c
                mask_c = cols < C
                x = tl.load(z_row + cols, mask=mask_c, other=float("-inf")).to(ACC)
                wp = w * (tl.exp(x - mu) * inv)
                offs = rows[:, None] + cols[None, :]
                mask = mask_k[:, None] & mask_c[None, :]
                u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(ACC)
                o = wp[None, :] * (u - s[:, None])
                tl.store(out_ptr + offs, o.to(out_ptr.dtype.element_ty), mask=mask)


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def plan(k: int, C: int, config: TileConfig | None = None) -> tuple[int, int, int]:
    """``(BLOCK_K, BLOCK_C, num_warps)`` for ``k`` tangents of ``C`` classes."""
    cfg = config or DEFAULT_CONFIG
    block_k = min(cfg.block_k, triton.next_power_of_2(max(k, 1)))
    block_c = min(
        cfg.block_c,
        triton.next_power_of_2(max(C, 1)),
        max(1, _pow2_at_most(cfg.tile_elems // block_k)),
    )
    num_warps = cfg.num_warps or (8 if block_k * block_c >= 4096 else 4)
    return block_k, block_c, num_warps


def softmax_ce_hvp_(
    logits: torch.Tensor,
    U: torch.Tensor,
    weights: torch.Tensor | None,
    out: torch.Tensor,
    *,
    config: TileConfig | None = None,
) -> None:
    """Write ``out[j, n] = w_n p_n ⊙ (U[j, n] − ⟨p_n, U[j, n]⟩)`` with the Triton kernel.

    ``logits`` ``(N, C)``, ``U`` and ``out`` ``(k, N, C)``, all contiguous on one device;
    ``weights`` ``(N,)`` in the arithmetic dtype or ``None``; ``out`` may be ``U``.
    """
    if logits.dim() != 2 or U.dim() != 3 or out.shape != U.shape:
        raise ValueError(
            "triton softmax_ce_hvp: logits must be (N, C), U and out (k, N, C); got "
            f"{tuple(logits.shape)}, {tuple(U.shape)}, {tuple(out.shape)}"
        )
    if U.dtype not in LOGIT_DTYPES or logits.dtype not in LOGIT_DTYPES[U.dtype]:
        raise TypeError(
            f"triton softmax_ce_hvp: unsupported dtypes logits={logits.dtype}, U={U.dtype}"
        )
    if not (logits.is_contiguous() and U.is_contiguous() and out.is_contiguous()):
        raise ValueError("triton softmax_ce_hvp: logits, U and out must be contiguous")
    k, N, C = U.shape
    if tuple(logits.shape) != (N, C) or C == 0:
        raise ValueError(
            f"triton softmax_ce_hvp: logits {tuple(logits.shape)} do not match U {tuple(U.shape)}"
        )
    if out.numel() == 0:
        return
    acc = tl.float64 if U.dtype == torch.float64 else tl.float32
    block_k, block_c, num_warps = plan(k, C, config)
    _softmax_ce_hvp_kernel[(N,)](
        logits,
        U,
        weights if weights is not None else logits,  # never read without HAS_W
        out,
        N,
        C,
        k,
        HAS_W=weights is not None,
        ACC=acc,
        BLOCK_C=block_c,
        BLOCK_K=block_k,
        num_warps=num_warps,
    )
