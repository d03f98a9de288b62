r"""Random probe vectors that are the same for a seed on every backend and block size, and
their products with an operator in blocks.

Every stochastic estimator draws probes :math:`z` with :math:`\mathbb{E}[z z^\top] = I`:

.. math::

    z_i \in \{-1, +1\}\ \text{(Rademacher)}\qquad\text{or}\qquad z_i \sim \mathcal{N}(0, 1)
    \ \text{(Gaussian)} .

Probe ``i`` of stream ``stream`` comes from its own CPU generator, seeded by hashing
``(seed, stream, i)`` with :class:`numpy.random.SeedSequence`, and is drawn in float64 on the
CPU before it is cast and moved. So probe ``i`` does not depend on how many probes are drawn
together, on the operator's device or dtype (up to the cast), or on which other streams an
estimator uses (Hutch++'s sketch and its residual probes are independent streams).

Example:
    >>> import torch
    >>> from landscape_fast.linalg.probes import probe_block
    >>> a = probe_block(5, range(0, 4), seed=0, stream="demo")
    >>> b = torch.cat([probe_block(5, range(0, 1), seed=0, stream="demo"),
    ...                probe_block(5, range(1, 4), seed=0, stream="demo")])
    >>> torch.equal(a, b), sorted(set(a.flatten().tolist()))
    (True, [-1.0, 1.0])
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from landscape_fast.operators.base import CurvatureOperator

#: Probe distributions: both have identity second moment.
PROBE_KINDS = ("rademacher", "gaussian")


def check_probe_kind(kind: str) -> str:
    """Validate a probe distribution name (see :data:`PROBE_KINDS`)."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe must be one of {PROBE_KINDS}, got {kind!r}")
    return kind


def _probe_seed(seed: int, stream: str, index: int) -> int:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(stream.encode()), index])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def probe_block(
    p: int,
    indices: range,
    *,
    seed: int,
    stream: str,
    kind: str = "rademacher",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Probes ``indices`` of a stream as a ``(len(indices), p)`` block.

    Args:
        p: Dimension.
        indices: Which probes of the stream (e.g. ``range(8, 16)`` for the second block of 8).
        seed: User seed.
        stream: Name of the stream; different names give independent probes.
        kind: ``"rademacher"`` or ``"gaussian"``.
        dtype: Output dtype (the probe is drawn in float64 and cast).
        device: Output device.
    """
    check_probe_kind(kind)
    rows = []
    for i in indices:
        gen = torch.Generator().manual_seed(_probe_seed(seed, stream, i))
        if kind == "rademacher":
            z = torch.randint(0, 2, (p,), generator=gen, dtype=torch.int8).to(torch.float64)
            rows.append(z.mul_(2).sub_(1))
        else:
            rows.append(torch.randn(p, generator=gen, dtype=torch.float64))
    if not rows:
        return torch.zeros((0, p), dtype=dtype, device=device)
    return torch.stack(rows).to(dtype=dtype, device=device)


def apply_blocks(
    op: CurvatureOperator, V: torch.Tensor, block_size: int, *, what: str, first: int = 0
) -> torch.Tensor:
    """``V A`` as float64, ``block_size`` rows per product; non-finite products raise.

    Args:
        op: The operator.
        V: ``(n, p)`` rows (any float dtype; cast to the operator's).
        block_size: Rows per :meth:`~CurvatureOperator.matmat` call.
        what: Names the rows in the error message (e.g. ``"trace: residual probe"``).
        first: Index of the first row in the caller's numbering.
    """
    out = []
    for i in range(0, V.shape[0], block_size):
        AV = op.matmat(V[i : i + block_size].to(device=op.device, dtype=op.dtype))
        bad = ~torch.isfinite(AV).all(dim=1)
        if bool(bad.any()):
            idx = [first + i + int(j) for j in torch.nonzero(bad).flatten()]
            raise FloatingPointError(
                f"{what} {idx}: the operator product is not finite (nan/inf); check that the "
                "loss and its gradient are finite at these parameters (lf.check_hvp helps)"
            )
        out.append(AV.to(torch.float64))
    if not out:
        return torch.zeros((0, V.shape[1]), dtype=torch.float64, device=op.device)
    return torch.cat(out)
